"""A recording array type: count the array operations a computation performs.

On CuPy every array operation is a kernel launch (5-10 us each), so the number of operations a
kernel performs on the CPU is the number of launches it would make on a GPU. This module wraps
NumPy arrays in :class:`RecordingArray`, whose namespace (:class:`RecordingNamespace`, reached
through ``array_api_compat.array_namespace(x)`` like any other) counts every call::

    from recording import recording, wrap, unwrap

    x, w = wrap(np.ones((64, 25))), wrap(np.ones((25, 6)))
    with recording() as rec:
        y = kernel(x, w)             # xp = array_api_compat.array_namespace(x) inside
    assert rec.ops == 2 and rec.host_reads == 0, rec.by_name

The counting rule, close to what CuPy launches:

* **Counted (``ops``)**: everything that computes or copies: arithmetic, comparison and
  bitwise operators (reflected and in-place ones too), ``@``, reductions, elementwise
  functions, ``where``, creation functions (``zeros``, ``ones``, ``full``, ``empty``,
  ``arange``, ``asarray`` of host data: an upload), ``astype``, ``stack``/``concat`` (one per
  call, whatever the number of parts), ``__setitem__``, and indexing with integer arrays or
  boolean masks. One call counts one, whatever it returns.
* **Not counted**: pure view operations, which CuPy does without a launch: basic indexing
  (ints, slices, ``...``, ``None``), ``reshape`` of an array whose layout allows a view,
  ``permute_dims``, ``matrix_transpose``, ``.T``/``.mT``, ``broadcast_to``, ``expand_dims``,
  ``squeeze``, ``flip``, ``unstack``, ``asarray``/``astype`` that return their input. The rule
  is applied by looking, not by name: a call whose returned arrays all share memory with one
  of its array arguments is a view and counts nothing; any other call counts one.
  Attributes that are not array operations (dtypes, ``isdtype``, ``result_type``,
  ``can_cast``, ``finfo``, ``iinfo``, constants, ``__array_namespace_info__``) pass through.
* **Host reads (``host_reads``, counted apart)**: ``bool(x)``, ``int(x)``, ``float(x)``,
  ``complex(x)``, ``operator.index(x)``, ``numpy.asarray(x)`` (``__array__``) and
  ``__dlpack__`` export. On a GPU each of these waits for the device and copies to the host.
  The host copy is always a copy, as it would be from a GPU.

Like a CuPy array, a recording array refuses to mix with other libraries' arrays: a NumPy
array (or a torch tensor...) as an operand or argument raises ``TypeError`` (only
``xp.asarray`` takes host data: that is the upload). NumPy scalars count as Python scalars.
:func:`wrap` and :func:`unwrap` are the test's own doors in and out; they count nothing.
"""

from __future__ import annotations

import operator
import os
import traceback
from collections import Counter
from types import ModuleType

import array_api_compat
import numpy as np

__all__ = ["RecordingArray", "RecordingNamespace", "Recorder", "recording", "wrap", "unwrap",
           "namespace"]

# Recorders that are counting now (nested `with recording()` blocks all count).
_ACTIVE: list["Recorder"] = []
_HERE = __file__


class Recorder:
    """Counts of array operations and host reads; a context manager that counts while active.

    Attributes:
        ops: array operations (kernel launches on a GPU).
        host_reads: scalar or array read-backs to the host (synchronisations on a GPU).
        by_name: ``Counter`` of ``ops`` by operation name (``"matmul"``, ``"__add__"``...).
        reads_by_name: ``Counter`` of ``host_reads`` by name (``"__float__"``...).
        events: with ``trace=True``, one ``(name, "file:line")`` per op and read, naming the
            first caller outside this module, array_api_compat, array_api_extra and NumPy.
    """

    def __init__(self, trace: bool = False):
        self.trace = trace
        self.reset()

    def reset(self) -> None:
        """Set every count back to zero."""
        self.ops = 0
        self.host_reads = 0
        self.by_name: Counter = Counter()
        self.reads_by_name: Counter = Counter()
        self.events: list[tuple[str, str]] = []

    def __enter__(self) -> "Recorder":
        _ACTIVE.append(self)
        return self

    def __exit__(self, *exc) -> None:
        _ACTIVE.remove(self)

    def __repr__(self) -> str:
        return (f"Recorder(ops={self.ops}, host_reads={self.host_reads}, "
                f"by_name={dict(self.by_name)}, reads_by_name={dict(self.reads_by_name)})")


def recording(trace: bool = False) -> Recorder:
    """``with recording() as rec:`` counts the operations inside the block into ``rec``."""
    return Recorder(trace)


_LIBRARY_FRAMES = ("array_api_compat", "array_api_extra", f"{os.sep}numpy{os.sep}")


def _caller() -> str:
    for frame in reversed(traceback.extract_stack()[:-3]):
        if frame.filename != _HERE and not any(s in frame.filename for s in _LIBRARY_FRAMES):
            return f"{frame.filename}:{frame.lineno}"
    return "?"


def _count_op(name: str) -> None:
    for rec in _ACTIVE:
        rec.ops += 1
        rec.by_name[name] += 1
        if rec.trace:
            rec.events.append((name, _caller()))


def _count_read(name: str) -> None:
    for rec in _ACTIVE:
        rec.host_reads += 1
        rec.reads_by_name[name] += 1
        if rec.trace:
            rec.events.append((name + " (host read)", _caller()))


# --- wrapping ---------------------------------------------------------------------------------

def wrap(a) -> "RecordingArray":
    """A :class:`RecordingArray` over the NumPy array ``a`` (no copy, nothing counted)."""
    if isinstance(a, RecordingArray):
        return a
    if isinstance(a, np.generic):
        a = np.asarray(a)
    if not isinstance(a, np.ndarray):
        raise TypeError(f"wrap takes a NumPy array, got {type(a).__name__}")
    return RecordingArray(a)


def unwrap(x) -> np.ndarray:
    """The NumPy array inside a :class:`RecordingArray` (no copy, nothing counted)."""
    if not isinstance(x, RecordingArray):
        raise TypeError(f"unwrap takes a RecordingArray, got {type(x).__name__}")
    return x._a


def _is_foreign_array(x) -> bool:
    if isinstance(x, (type, np.generic, RecordingArray)):
        return False                          # dtypes, NumPy scalars, our own arrays
    return (isinstance(x, np.ndarray) or hasattr(x, "__array_namespace__")
            or hasattr(x, "__dlpack__"))


def _mixed(x, where: str) -> TypeError:
    kind = "NumPy array" if isinstance(x, np.ndarray) else type(x).__name__
    return TypeError(f"{where}: a {kind} met a RecordingArray, as a host array would meet a "
                     "CuPy array; move it with xp.asarray(x) (or recording.wrap in a test)")


def _wrap_result(r):
    if isinstance(r, np.ndarray):
        return RecordingArray(r)
    if isinstance(r, np.generic):
        return RecordingArray(np.asarray(r))
    if isinstance(r, tuple):
        items = [_wrap_result(i) for i in r]
        return type(r)(*items) if hasattr(r, "_fields") else tuple(items)
    if isinstance(r, list):
        return [_wrap_result(i) for i in r]
    return r


def _result_arrays(r, out: list) -> list:
    if isinstance(r, np.ndarray):
        out.append(r)
    elif isinstance(r, (tuple, list)):
        for i in r:
            _result_arrays(i, out)
    return out


def _is_view(results: list, inputs: list) -> bool:
    """True if every result shares memory with an input array (a view, or the input itself)."""
    return bool(results) and all(
        any(np.may_share_memory(r, a) for a in inputs) for r in results)


# --- the array --------------------------------------------------------------------------------

_Scalar = (bool, int, float, complex, np.generic)


def _operand(other, name):
    if isinstance(other, RecordingArray):
        return other._a
    if isinstance(other, _Scalar):
        return other
    if _is_foreign_array(other):
        raise _mixed(other, name)
    return NotImplemented


def _binary(name, fn):
    def method(self, other):
        b = _operand(other, name)
        if b is NotImplemented:
            return NotImplemented
        _count_op(name)
        return _wrap_result(fn(self._a, b))
    method.__name__ = name
    return method


def _reflected(name, fn):
    def method(self, other):
        b = _operand(other, name)
        if b is NotImplemented:
            return NotImplemented
        _count_op(name)
        return _wrap_result(fn(b, self._a))
    method.__name__ = name
    return method


def _inplace(name, fn):
    def method(self, other):
        b = _operand(other, name)
        if b is NotImplemented:
            return NotImplemented
        _count_op(name)
        fn(self._a, b)          # NumPy's in-place operator mutates self._a
        return self
    method.__name__ = name
    return method


def _unary(name, fn):
    def method(self):
        _count_op(name)
        return _wrap_result(fn(self._a))
    method.__name__ = name
    return method


def _read(name, fn):
    def method(self):
        _count_read(name)
        return fn(self._a)
    method.__name__ = name
    return method


def _index_key(key, name):
    """Unwrap RecordingArray indices; make an all-basic key end in ``...`` so NumPy returns a
    0-d view rather than a scalar copy (as CuPy does)."""
    items = key if isinstance(key, tuple) else (key,)
    out = []
    basic = True
    for k in items:
        if isinstance(k, RecordingArray):
            k = k._a
            basic = False
        elif _is_foreign_array(k):
            raise _mixed(k, name)
        elif not (k is None or k is Ellipsis or isinstance(k, (int, slice, np.integer))) \
                or isinstance(k, bool):
            basic = False
        out.append(k)
    if basic and Ellipsis not in out:
        out.append(Ellipsis)
    return tuple(out) if isinstance(key, tuple) or basic else out[0]


class RecordingArray:
    """A NumPy array in disguise whose operations are counted (see the module docstring).

    ``__array_namespace__`` returns the one :data:`namespace`; ``device`` is ``"cpu"``.
    """

    __slots__ = ("_a",)
    __array_ufunc__ = None     # NumPy operands defer to our reflected operators (which refuse)

    def __init__(self, a: np.ndarray):
        self._a = a

    def __array_namespace__(self, api_version=None):
        return namespace

    # --- attributes (free) ---
    @property
    def shape(self):
        return self._a.shape

    @property
    def ndim(self):
        return self._a.ndim

    @property
    def dtype(self):
        return self._a.dtype

    @property
    def size(self):
        return self._a.size

    @property
    def device(self):
        return "cpu"

    @property
    def T(self):
        return RecordingArray(self._a.T)

    @property
    def mT(self):
        return RecordingArray(np.swapaxes(self._a, -1, -2))

    def to_device(self, device, /, *, stream=None):
        if device not in ("cpu", None):
            raise ValueError(f"a RecordingArray lives on 'cpu', not {device!r}")
        return self

    def __repr__(self):
        return f"RecordingArray({self._a!r})"

    # --- indexing ---
    def __getitem__(self, key):
        k = _index_key(key, "__getitem__")
        out = self._a[k]
        if not isinstance(out, np.ndarray):
            out = np.asarray(out)
        if not np.may_share_memory(out, self._a):
            _count_op("__getitem__")         # integer-array or mask indexing: a gather
        return RecordingArray(out)

    def __setitem__(self, key, value):
        k = _index_key(key, "__setitem__")
        v = _operand(value, "__setitem__")
        if v is NotImplemented:
            raise TypeError(f"cannot assign a {type(value).__name__} into a RecordingArray")
        _count_op("__setitem__")
        self._a[k] = v

    # --- host reads ---
    __bool__ = _read("__bool__", bool)
    __int__ = _read("__int__", int)
    __float__ = _read("__float__", float)
    __complex__ = _read("__complex__", complex)
    __index__ = _read("__index__", operator.index)

    def __array__(self, dtype=None, copy=None):
        if copy is False:
            raise ValueError("a RecordingArray stands for device memory: it cannot be viewed "
                             "from the host without a copy")
        _count_read("__array__")
        return np.array(self._a, dtype=dtype, copy=True)

    def __dlpack__(self, *, stream=None, max_version=None, dl_device=None, copy=None):
        _count_read("__dlpack__")
        host = np.array(self._a, copy=True)
        kwargs = {k: v for k, v in (("max_version", max_version), ("dl_device", dl_device))
                  if v is not None}
        return host.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self._a.__dlpack_device__()

    # --- unary ---
    __neg__ = _unary("__neg__", operator.neg)
    __pos__ = _unary("__pos__", operator.pos)
    __abs__ = _unary("__abs__", operator.abs)
    __invert__ = _unary("__invert__", operator.invert)


# Binary operators: forward, reflected and in-place forms of each.
_BINARY = {
    "add": (operator.add, operator.iadd), "sub": (operator.sub, operator.isub),
    "mul": (operator.mul, operator.imul), "truediv": (operator.truediv, operator.itruediv),
    "floordiv": (operator.floordiv, operator.ifloordiv), "mod": (operator.mod, operator.imod),
    "pow": (operator.pow, operator.ipow), "matmul": (operator.matmul, operator.imatmul),
    "and": (operator.and_, operator.iand), "or": (operator.or_, operator.ior),
    "xor": (operator.xor, operator.ixor), "lshift": (operator.lshift, operator.ilshift),
    "rshift": (operator.rshift, operator.irshift),
}
for _op, (_fn, _ifn) in _BINARY.items():
    setattr(RecordingArray, f"__{_op}__", _binary(f"__{_op}__", _fn))
    setattr(RecordingArray, f"__r{_op}__", _reflected(f"__r{_op}__", _fn))
    setattr(RecordingArray, f"__i{_op}__", _inplace(f"__i{_op}__", _ifn))
for _op in ("eq", "ne", "lt", "le", "gt", "ge"):
    setattr(RecordingArray, f"__{_op}__", _binary(f"__{_op}__", getattr(operator, _op)))
RecordingArray.__hash__ = None
del _op, _fn, _ifn


# --- the namespace ----------------------------------------------------------------------------

# Passed through untouched: not array operations.
_PASS = {"isdtype", "__array_namespace_info__", "__array_api_version__", "__name__", "newaxis",
         "e", "pi", "inf", "nan"}
# Called with unwrapped arguments, not counted, result not wrapped: they answer about dtypes.
_QUERIES = {"result_type", "can_cast", "finfo", "iinfo"}
# Functions whose first argument may be host data (an upload to the device).
_UPLOADS = {"asarray"}


def _unwrap_args(obj, inputs: list, name: str, host_ok: bool = False):
    if isinstance(obj, RecordingArray):
        inputs.append(obj)
        return obj._a
    if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
        return type(obj)(_unwrap_args(o, inputs, name, host_ok) for o in obj)
    if isinstance(obj, dict):
        return {k: _unwrap_args(v, inputs, name, host_ok) for k, v in obj.items()}
    if _is_foreign_array(obj):
        if not host_ok:
            raise _mixed(obj, f"xp.{name}")
        return np.array(obj, copy=True)       # an upload copies, as to a GPU
    return obj


class RecordingNamespace:
    """The array API namespace of :class:`RecordingArray`: ``array_api_compat.numpy`` with
    every call counted (see the module docstring for the rule).

    Submodules (``linalg``, ``fft``) are wrapped the same way, their ops named
    ``"linalg.matmul"`` etc.
    """

    def __init__(self, inner: ModuleType, prefix: str = ""):
        self._inner = inner
        self._prefix = prefix
        self.__name__ = (__name__ + "." + prefix.rstrip(".")) if prefix else __name__

    def __repr__(self):
        return f"<RecordingNamespace {self.__name__!r} over {self._inner.__name__}>"

    def __dir__(self):
        return dir(self._inner)

    def __getattr__(self, attr):
        value = getattr(self._inner, attr)
        if isinstance(value, ModuleType):
            result = RecordingNamespace(value, self._prefix + attr + ".")
        elif attr in _PASS or attr.startswith("_") or not callable(value) \
                or isinstance(value, type):
            result = value                            # dtypes, constants, isdtype...
        elif attr in _QUERIES:
            result = self._query(value, attr)
        else:
            result = self._op(value, self._prefix + attr)
        setattr(self, attr, result)                   # look each name up once
        return result

    @staticmethod
    def _query(fn, name):
        def query(*args, **kwargs):
            inputs: list = []
            return fn(*_unwrap_args(args, inputs, name), **_unwrap_args(kwargs, inputs, name))
        query.__name__ = name
        return query

    @staticmethod
    def _op(fn, name):
        upload = name in _UPLOADS

        def op(*args, **kwargs):
            inputs: list = []
            a = [_unwrap_args(x, inputs, name, host_ok=upload and i == 0)
                 for i, x in enumerate(args)]
            kw = {k: _unwrap_args(v, inputs, name, host_ok=upload and k == "obj")
                  for k, v in kwargs.items()}
            result = fn(*a, **kw)
            if not _is_view(_result_arrays(result, []), [x._a for x in inputs]):
                _count_op(name)
            for x in inputs:
                if result is x._a:
                    return x                  # asarray(x), astype(x, x.dtype, copy=False)
            return _wrap_result(result)
        op.__name__ = name
        op.__doc__ = fn.__doc__
        return op


namespace = RecordingNamespace(array_api_compat.array_namespace(np.empty(0)))
"""The one recording namespace: ``wrap(a).__array_namespace__()`` is this object."""
