"""The :class:`Backend` base class: one array-API namespace on one device.

A backend is the only place in portacnn that knows which array library runs. Everything above
it receives a namespace ``xp`` from a backend, or infers it from its inputs with
:func:`namespace`, and computes with the array API standard alone.

The base class names no library: it works for any namespace that ``array_api_compat``
recognises (JAX, for one). The library classes in this package (:mod:`.numpy`, :mod:`.cupy`,
:mod:`.torch`, :mod:`.jax`, :mod:`.strict`) add what their library needs: a device string,
their arrays' copy to the host, thread control, a smoke test, a faster kernel set.
:func:`to_numpy` copies an array of any library to the host with the conversion of the class
registered for it (:mod:`.registry`).
"""

from __future__ import annotations

import contextlib
import functools
from types import ModuleType
from typing import Any

import array_api_compat
import numpy as np  # host side only: host copies, never kernels

from ..kernels import Kernels
from ..namespace import describe_array, library_name, namespace
from ..scalars import is_int
from .memory import MemoryPeak, TracedPeak, UnknownPeak
from .random import PortableRNG
from .registry import registered_class

__all__ = ["Backend", "namespace", "on_device", "to_numpy", "is_host_array", "describe_array",
           "library_name"]


class Backend:
    """An array-API namespace and a device, with the few helpers portacnn needs.

    The base class serves any namespace ``array_api_compat`` recognises; subclasses exist for
    libraries that need more (see :mod:`portacnn.backends`). A subclass overrides the methods
    it needs in this class's order: ``parse``, ``create``, ``owns``, ``array_to_numpy``,
    ``activate``, ``for_local_rank``, ``use``, ``synchronize``, ``memory_peak``, ``device_info``,
    ``limit_threads``, ``thread_info``.

    Attributes:
        name: the library's name (``"numpy"``, ``"cupy"``, ``"torch"``, ``"jax"``...).
        xp: the array-API-compatible namespace.
        device: the device arrays are created on.
        kernels: the kernel set this backend runs (:class:`~portacnn.kernels.Kernels`, the
            portable one, unless a subclass names a faster set): every layer, the optimizers
            and the training loop call kernels as its attributes.
        host_sync_is_free: True where reading a scalar back (``float(x)``) does not stall a
            device queue, so progress can show running figures.
        device_data_limit: most bytes of data (inputs in the working dtype plus labels) that
            ``fit`` / ``evaluate`` / ``predict`` move to the device whole, once, instead of
            batch by batch; batches are then gathered on the device (``xp.take``), and a
            shuffled epoch holds as many bytes again. None (or 0) where host arrays are the
            device's arrays (the CPU) or moving per batch is the better choice.
        accelerator: True when arrays live off the host (a GPU): CPU thread counts do not
            change the device's speed, and timings need :meth:`synchronize`.
        host_memory_traced: True where arrays are NumPy buffers, which ``tracemalloc`` sees
            (:meth:`memory_peak`).
    """

    library: str | None = None      # the module a registered subclass serves
    aliases: tuple = ()             # other device strings that select it
    kernels: Kernels = Kernels()
    host_sync_is_free = False
    device_data_limit: int | None = None
    accelerator = False
    host_memory_traced = False

    def __init__(self, xp: ModuleType, device: Any = None, native: ModuleType | None = None,
                 name: str | None = None):
        self.xp = xp
        self.device = device if device is not None else array_api_compat.device(xp.empty(0))
        self.native = native
        self.name = name or library_name(xp)
        self._array_type = type(xp.empty(0, device=self.device))

    @classmethod
    def parse(cls, key: str) -> tuple[bool, Any]:
        """Whether the (lower-case) device string ``key`` selects this class, and the device
        it names (None for the default)."""
        return False, None

    @classmethod
    def create(cls, device=None) -> "Backend":
        """An instance on ``device`` (None: the library's default device)."""
        raise NotImplementedError(f"{cls.__name__} is made by get_backend(module)")

    # --- identity -------------------------------------------------------------------------
    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, device={self.device!r})"

    def __eq__(self, other) -> bool:
        return (isinstance(other, Backend) and other.xp is self.xp
                and str(other.device) == str(self.device))

    def __hash__(self) -> int:
        return hash((self.name, str(self.device)))

    @property
    def description(self) -> str:
        """A one-line human description, e.g. ``"numpy 2.1.0 on cpu"``."""
        version = getattr(self.native, "__version__", "") if self.native else ""
        return " ".join(part for part in (self.name, version, "on", str(self.device)) if part)

    # --- dtypes and arrays ----------------------------------------------------------------
    def dtype(self, dtype):
        """Resolve ``"float32"`` / ``"float64"`` (or a dtype of this namespace) to a dtype."""
        if isinstance(dtype, str):
            if dtype not in ("float32", "float64"):
                raise ValueError(f"unsupported dtype {dtype!r}: use 'float32' or 'float64'")
            return getattr(self.xp, dtype)
        return dtype

    def owns(self, x) -> bool:
        """True if ``x`` is an array of this backend's namespace on its device, or one being
        traced (``jax.jit``'s tracers have no device yet: it is placed when the program runs)."""
        if type(x) is self._array_type and str(array_api_compat.device(x)) == str(self.device):
            return True
        try:
            xp = array_api_compat.array_namespace(x)
        except TypeError:
            return False
        device = array_api_compat.device(x)
        return xp is self.xp and (device is None or str(device) == str(self.device))

    @staticmethod
    def array_to_numpy(x) -> np.ndarray:
        """Copy an array of this class's library to a host NumPy array; :func:`to_numpy` calls
        it without making a backend.

        The generic path, for any library: DLPack (``np.from_dlpack``) where the array's
        device allows it, else ``np.asarray``; an array with neither is first moved to its
        namespace's default device. Library classes override it with their own copy.
        """
        if hasattr(x, "__dlpack__"):
            try:
                return np.from_dlpack(x)
            except (TypeError, RuntimeError, BufferError, ValueError):
                pass                     # e.g. a device DLPack cannot export to the host
        if hasattr(x, "__array_namespace__") and not hasattr(x, "__array__"):
            xp = x.__array_namespace__()
            return np.asarray(xp.asarray(x, device=array_api_compat.device(xp.empty(0))))
        return np.asarray(x)

    def check(self, x, what: str = "the input") -> None:
        """Raise ``TypeError`` unless ``x`` is an array of this backend on its device.

        The message names both sides and how to move the array, e.g. "the input is a numpy
        array on cpu but the model is on cupy (cuda:0): move it with model.backend.asarray(x)".
        """
        if not self.owns(x):
            raise TypeError(
                f"{what} is a {describe_array(x)} but the model is on {self.name} "
                f"({self.device}): move it with model.backend.asarray(x)"
            )

    def asarray(self, x, dtype=None):
        """Return ``x`` (a host array, list, or an array of any backend) on this device.

        ``dtype`` may be a string (``"float32"``) or a dtype of this namespace. Arrays already
        on this backend are returned without a copy when the dtype matches; an array of
        another backend goes through the host (:func:`to_numpy`).
        """
        dtype = self.dtype(dtype) if dtype is not None else None
        if not self.owns(x) and _is_array(x):
            x = to_numpy(x)
        with self.activate():
            return self.xp.asarray(x, dtype=dtype, device=self.device)

    def to_numpy(self, x) -> np.ndarray:
        """Copy an array of any backend to a host NumPy array (:func:`to_numpy`)."""
        return to_numpy(x)

    def rng(self, seed: int | None = None) -> PortableRNG:
        """A :class:`~.random.PortableRNG` seeded with ``seed`` drawing onto this backend."""
        return PortableRNG(self, seed)

    # --- execution ------------------------------------------------------------------------
    def activate(self):
        """Context manager making this backend's device the current one, for libraries that
        launch on a current device (CuPy); a no-op elsewhere."""
        return contextlib.nullcontext()

    @classmethod
    def for_local_rank(cls, local_rank: int) -> "Backend":
        """A backend on the default device of the process with node-local rank ``local_rank``
        when several processes share this machine (data parallelism): the library's default
        device, where there is a single one. GPU classes create device
        ``local_rank % device count`` and touch no other device (:func:`get_backend` with
        ``local_rank``)."""
        return cls.create()

    def use(self) -> None:
        """Make this backend's device the current one for the rest of this thread (a process
        that computes on one device, as each process of a data-parallel job does); a no-op for
        libraries without a current device."""

    @property
    def jit(self):
        """The library's ``jit(fn)``, which traces a function of arrays, array-API code as it is
        written, into one compiled program (``jax.jit``); None where the library runs eagerly
        only (NumPy, CuPy, torch). Compiled steps (``fit(..., compile=True)``) need it."""
        jit = getattr(self.native, "jit", None)
        return jit if callable(jit) else None

    def synchronize(self) -> None:
        """Wait until queued device work is finished (a no-op on the CPU). Use before timing."""

    def memory_peak(self) -> MemoryPeak:
        """Context manager measuring the peak of the memory allocated inside it, above the
        level at its start: ``with backend.memory_peak() as peak: ...; peak.bytes`` (None where
        this backend cannot tell). Backends whose arrays are NumPy buffers
        (``host_memory_traced``) trace host allocations with ``tracemalloc``; GPU backends count
        their device memory (:mod:`.memory`)."""
        return MemoryPeak(TracedPeak() if self.host_memory_traced else UnknownPeak())

    def device_info(self) -> dict:
        """What a benchmark report names the device by: the library and its version, the
        device; GPU backends add its name, the driver and runtime versions and its memory."""
        version = getattr(self.native, "__version__", None) if self.native else None
        return {"library": self.name, "library_version": version, "device": str(self.device)}

    def limit_threads(self, threads: int | None):
        """Context manager capping the CPU threads of the BLAS libraries loaded in this process
        (threadpoolctl); ``None`` leaves them alone. Subclasses add their library's own pools."""
        if threads is None:
            return contextlib.nullcontext()
        if not is_int(threads) or threads < 1:
            raise ValueError(f"threads must be a positive int or None, got {threads!r}")
        threads = int(threads)
        from threadpoolctl import threadpool_limits

        return threadpool_limits(limits=threads)

    def thread_info(self) -> dict:
        """The thread count of each CPU pool in use, e.g. ``{"openblas": 1}``."""
        from threadpoolctl import threadpool_info

        return {pool["internal_api"]: pool["num_threads"] for pool in threadpool_info()}


def to_numpy(x) -> np.ndarray:
    """Copy an array of any backend (or a Python sequence) to a host NumPy array.

    A host NumPy array is returned as is; another array is copied by
    :meth:`Backend.array_to_numpy` of the class registered for its library (``x.get()`` for
    CuPy, ``x.detach().cpu().numpy()`` for torch), or of the generic :class:`Backend` for a
    library without a class. No backend is made, so no GPU smoke test runs.
    """
    if is_host_array(x):
        return x
    if not _is_array(x):
        return np.asarray(x)
    try:
        library = library_name(namespace(x))
    except TypeError:                    # an array array-api-compat cannot place
        return Backend.array_to_numpy(x)
    return (registered_class(library) or Backend).array_to_numpy(x)


def on_device(method):
    """Decorator: run ``method(obj, ...)`` with ``obj.backend``'s device current
    (:meth:`Backend.activate`), so that everything it allocates or launches lands on that
    device. ``obj.backend`` may be None (an unbuilt layer): then nothing is activated."""

    @functools.wraps(method)
    def run(obj, *args, **kwargs):
        backend = obj.backend
        if backend is None:
            return method(obj, *args, **kwargs)
        with backend.activate():
            return method(obj, *args, **kwargs)

    return run


def is_host_array(x) -> bool:
    """True for a host NumPy array (data a model moves to its device batch by batch)."""
    return isinstance(x, np.ndarray)


def _is_array(x) -> bool:
    # An array of some library (not a list, tuple or Python number).
    return not isinstance(x, (list, tuple, int, float)) and (
        hasattr(x, "__array_namespace__") or array_api_compat.is_array_api_obj(x))
