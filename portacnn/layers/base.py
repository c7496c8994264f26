"""The layer base class and the handles through which a model sees a layer's arrays.

:class:`Layer` holds ``params`` / ``grads`` / ``buffers`` and the forward cache, builds itself
on the backend of its first input (or at once, :func:`_maybe_build_now`), checks inputs at the
boundary and reaches its kernels as ``self.kernels`` (the backend's kernel set).
:class:`Parameter` and :class:`Buffer` name one trainable or saved array of a layer; a model
makes them once, when it is built. :func:`unchanged_on_error` makes building all or nothing;
:func:`_init_weight` draws the initial weights of :class:`~portacnn.layers.Conv2D` and
:class:`~portacnn.layers.Dense`.
"""

from __future__ import annotations

import contextlib
import math

from ..backends import Backend, PortableRNG, backend_of, get_backend
from .symbolic import call_symbolic, is_symbolic


class _LayerArray:
    """One named array of a layer's store (``params`` or ``buffers``): reading ``value`` gives
    ``store[key]`` and assigning it replaces that array."""

    __slots__ = ("name", "layer", "key")

    def __init__(self, name: str, layer: "Layer", key: str):
        self.name, self.layer, self.key = name, layer, key

    def _store(self) -> dict:
        raise NotImplementedError

    @property
    def value(self):
        return self._store()[self.key]

    @value.setter
    def value(self, array) -> None:
        self._store()[self.key] = array

    @property
    def shape(self) -> tuple:
        return tuple(self.value.shape)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, shape={self.shape})"


class Parameter(_LayerArray):
    """One trainable array of a layer and its gradient, as the optimizer and checkpoints see it.

    ``value`` is ``layer.params[key]`` and ``grad`` is ``layer.grads[key]`` (None before the
    first backward pass); assigning ``value`` replaces the layer's array, which is how the
    optimizers update parameters on backends whose arrays are immutable (JAX). A model makes
    its ``Parameter`` objects once, when it is built (:meth:`portacnn.Sequential.parameters`).
    """

    __slots__ = ()

    def _store(self) -> dict:
        return self.layer.params

    @property
    def grad(self):
        return self.layer.grads.get(self.key)

    @grad.setter
    def grad(self, array) -> None:
        self.layer.grads[self.key] = array


class Buffer(_LayerArray):
    """One array of a layer's state that is saved but not trained (batch norm's running
    statistics): ``value`` is ``layer.buffers[key]``, and assigning it replaces the array."""

    __slots__ = ()

    def _store(self) -> dict:
        return self.layer.buffers


class Layer:
    """Base class. Subclasses implement ``_build``, ``output_shape``, ``_forward``,
    ``_backward`` and ``get_config``, and a layer with parameters or buffers ``param_shapes`` /
    ``buffer_shapes``: the shapes ``_build`` allocates, told without allocating them.

    Attributes:
        params, grads: parameter and gradient arrays by name (empty for parameter-free layers).
        buffers: non-trained state saved with the model (e.g. running statistics).
        training: True in training mode (dropout active), False after ``eval()``.
        need_input_grad: False for a network's first layer, which then skips computing dx.
        samples_independent: True when each sample's output depends on that sample alone and
            no random numbers are drawn (False for batch norm and dropout), so a batch may be
            processed in chunks with the same result.
        multiple_inputs: True for a layer that merges several tensors (:class:`~.merge.Add`,
            :class:`~.merge.Concatenate`): its forward takes a list, its backward returns one
            gradient per input, and its shapes are lists of per-sample shapes.

    Calling a layer, ``layer(x)``, is ``forward(x)`` on an array; on a symbolic tensor
    (:func:`portacnn.Input` or another layer's call) it records the call for a graph model,
    :class:`portacnn.Model` (see :mod:`.symbolic`).
    """

    samples_independent = True
    multiple_inputs = False

    def __init__(self, *, dtype: str | None = None, name: str | None = None):
        if dtype not in (None, "float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
        self.requested_dtype = dtype            # None: the model's dtype (float32 alone)
        self.dtype_name = dtype or "float32"
        self.name = name or type(self).__name__
        self.params: dict = {}
        self.grads: dict = {}
        self.buffers: dict = {}
        self.training = True
        self.need_input_grad = True
        self.backend: Backend | None = None
        self.input_shape: tuple | None = None   # per sample, without the batch axis
        self._cache = None

    # --- building -------------------------------------------------------------------------
    @property
    def built(self) -> bool:
        return self.backend is not None

    def build(self, input_shape, backend=None, rng: PortableRNG | None = None) -> tuple:
        """Create parameters for per-sample ``input_shape`` on ``backend``; return output shape."""
        backend = get_backend(backend)
        input_shape = tuple(None if d is None else int(d) for d in input_shape)
        out = self.output_shape(input_shape)        # validates before allocating anything
        with unchanged_on_error([self]):
            self.backend = backend
            self.input_shape = input_shape
            with backend.activate():
                self._build(input_shape, rng or backend.rng(getattr(self, "seed", None)))
        return out

    def _build(self, input_shape, rng: PortableRNG) -> None:
        pass

    def param_shapes(self, input_shape) -> dict:
        """The shape of each parameter the layer holds for per-sample ``input_shape``, by
        name (``{"weight": (F, C, kh, kw), "bias": (F,)}``); ``{}`` without parameters."""
        return {}

    def buffer_shapes(self, input_shape) -> dict:
        """The shape of each buffer (saved, untrained array) the layer holds for per-sample
        ``input_shape``, by name (batch norm: ``{"running_mean": (C,), "running_var": (C,)}``);
        ``{}`` without buffers. With :meth:`param_shapes` and :meth:`output_shape` it tells
        what ``build`` will allocate without allocating it (``portacnn.load`` checks a file's
        tensors against these first)."""
        return {}

    def output_shape(self, input_shape) -> tuple:
        """Per-sample output shape for a per-sample ``input_shape`` (batch axis excluded)."""
        return tuple(input_shape)

    @property
    def xp(self):
        return self.backend.xp

    @property
    def dtype(self):
        return self.backend.dtype(self.dtype_name)

    def parameters(self, prefix: str = "") -> list[Parameter]:
        """New :class:`Parameter` objects for the layer's trainable arrays, named
        ``prefix + key`` (a model makes them once, when it is built)."""
        return [Parameter(prefix + key, self, key) for key in self.params]

    def buffer_slots(self, prefix: str = "") -> list[Buffer]:
        """New :class:`Buffer` objects for the layer's saved, untrained arrays."""
        return [Buffer(prefix + key, self, key) for key in self.buffers]

    @property
    def kernels(self):
        """The kernel set of the layer's backend (``backend.kernels``): the portable kernels,
        or the backend's faster versions of some (:class:`portacnn.kernels.Kernels`)."""
        return self.backend.kernels

    def num_params(self) -> int:
        """Number of trainable scalars."""
        return sum(math.prod(p.shape) for p in self.params.values())

    # --- modes and devices ----------------------------------------------------------------
    def train(self, mode: bool = True) -> "Layer":
        self.training = mode
        return self

    def eval(self) -> "Layer":
        return self.train(False)

    def to(self, device, dtype: str | None = None) -> "Layer":
        """Move parameters, gradients and buffers to another backend (a copy via the host),
        cast to ``dtype`` (``"float32"`` / ``"float64"``) if given."""
        backend = get_backend(device)
        if dtype is not None:
            backend.dtype(dtype)               # raises for anything but float32 / float64
            self.dtype_name = dtype
        for store in (self.params, self.grads, self.buffers):
            for key, value in store.items():
                store[key] = backend.asarray(value, dtype=dtype)
        if self.built:
            self.backend = backend
        self._cache = None
        return self

    # --- forward / backward ---------------------------------------------------------------
    def forward(self, x):
        """Compute the layer's output for a batch ``x`` (batch axis first)."""
        if not self.built:
            self.build(tuple(x.shape[1:]), backend_of(x))
        else:
            self.backend.check(x, f"the input to {self.name}")
            expected = self.input_shape
            if tuple(x.shape[1:]) != expected and self._strict_shape:
                raise ValueError(
                    f"{self.name} was built for inputs of shape (N, {', '.join(map(str, expected))}) "
                    f"but got {tuple(x.shape)}"
                )
        if self.params and x.dtype != self.dtype:
            raise TypeError(
                f"{self.name} holds {self.dtype_name} parameters but the input is {x.dtype}: "
                f"cast the input with xp.astype(x, xp.{self.dtype_name}) or build the layer with "
                f"dtype='{x.dtype}'"
            )
        with self.backend.activate():
            return self._forward(x)

    _strict_shape = True

    def backward(self, dy):
        """Given dL/dy, store parameter gradients in ``grads`` and return dL/dx."""
        if self._cache is None:
            raise RuntimeError(f"{self.name}.backward called before forward in training mode "
                               "(a forward in eval mode keeps no cache): call train(), then "
                               "forward, then backward")
        with self.backend.activate():
            return self._backward(dy)

    def __call__(self, x):
        if is_symbolic(x):
            return call_symbolic(self, x)
        return self.forward(x)

    def describe(self) -> str:
        """A few words on the layer's settings for ``summary()`` (e.g. ``"5x5, stride 1"``)."""
        return ""

    def get_config(self) -> dict:
        """Constructor arguments as JSON-able values (used by checkpoints)."""
        return {"dtype": self.dtype_name, "name": self.name}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "name")
        return f"{type(self).__name__}({args})"


@contextlib.contextmanager
def unchanged_on_error(layers):
    """Run the block; if it raises, put every layer of ``layers`` back as it was before it
    (each attribute, and the contents of ``params`` / ``grads`` / ``buffers`` and any other
    dict), so that a failed build leaves no layer half built for the next call to trip on."""
    saved = [(layer, {key: (value, dict(value) if isinstance(value, dict) else None)
                      for key, value in vars(layer).items()}) for layer in layers]
    try:
        yield
    except BaseException:
        for layer, attributes in saved:
            state = vars(layer)
            state.clear()
            for key, (value, contents) in attributes.items():
                if contents is not None:        # the same dict object, its old entries
                    value.clear()
                    value.update(contents)
                state[key] = value
        raise


def _maybe_build_now(layer: Layer, input_shape, device, seed) -> None:
    if input_shape is not None:
        layer.build(input_shape, get_backend(device), get_backend(device).rng(seed))


def _init_weight(rng: PortableRNG, shape, fan_in, fan_out, init, dtype):
    if init == "he":
        return rng.normal(shape, std=math.sqrt(2.0 / fan_in), dtype=dtype)
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(shape, -limit, limit, dtype=dtype)
