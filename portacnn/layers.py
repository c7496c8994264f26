"""Layers: thin classes that hold parameters, gradients and the forward cache.

The math lives in :mod:`portacnn.kernels`; a layer only keeps what backward needs. Every layer
has ``forward(x)``, ``backward(dy) -> dx`` and the dicts ``params`` / ``grads`` (keys
``"weight"`` / ``"bias"``). Shapes follow PyTorch: inputs NCHW, conv weight
``(out_channels, in_channels, kh, kw)``, dense weight ``(out_features, in_features)``.

A layer whose input size is not given is built on its first ``forward`` (or by
:class:`portacnn.Sequential` from ``input_shape``), on the backend of that input:

    >>> conv = Conv2D(6, 5, padding=2, in_channels=1, seed=0)   # built now, on the CPU
    >>> dense = Dense(10)                                      # built when it first sees x
"""

from __future__ import annotations

import math

from .kernels.shapes import (check_nchw, check_padding, check_padding_mode, geometry,
                               kernel_pair, stride_pair)
from .backends import Backend, PortableRNG, backend_of, get_backend

__all__ = ["Parameter", "Buffer", "Layer", "Conv2D", "MaxPool2D", "MinPool2D", "AvgPool2D", "Upsample2D", "BatchNorm2D",
           "BatchNorm1D", "Dense", "Flatten", "ReLU", "Tanh", "Sigmoid", "Dropout", "LAYERS"]


class Parameter:
    """One trainable array of a layer and its gradient, as the optimizer and checkpoints see it.

    ``value`` is ``layer.params[key]`` and ``grad`` is ``layer.grads[key]`` (None before the
    first backward pass); assigning ``value`` replaces the layer's array, which is how the
    optimizers update parameters on backends whose arrays are immutable (JAX). A model makes
    its ``Parameter`` objects once, when it is built (:meth:`portacnn.Sequential.parameters`).
    """

    __slots__ = ("name", "layer", "key")

    def __init__(self, name: str, layer: "Layer", key: str):
        self.name, self.layer, self.key = name, layer, key

    @property
    def value(self):
        return self.layer.params[self.key]

    @value.setter
    def value(self, array) -> None:
        self.layer.params[self.key] = array

    @property
    def grad(self):
        return self.layer.grads.get(self.key)

    @grad.setter
    def grad(self, array) -> None:
        self.layer.grads[self.key] = array

    @property
    def shape(self) -> tuple:
        return tuple(self.value.shape)

    def __repr__(self) -> str:
        return f"Parameter({self.name!r}, shape={self.shape})"


class Buffer:
    """One array of a layer's state that is saved but not trained (batch norm's running
    statistics): ``value`` is ``layer.buffers[key]``, and assigning it replaces the array."""

    __slots__ = ("name", "layer", "key")

    def __init__(self, name: str, layer: "Layer", key: str):
        self.name, self.layer, self.key = name, layer, key

    @property
    def value(self):
        return self.layer.buffers[self.key]

    @value.setter
    def value(self, array) -> None:
        self.layer.buffers[self.key] = array

    @property
    def shape(self) -> tuple:
        return tuple(self.value.shape)

    def __repr__(self) -> str:
        return f"Buffer({self.name!r}, shape={self.shape})"


class Layer:
    """Base class. Subclasses implement ``_build``, ``output_shape``, ``_forward``,
    ``_backward`` and ``get_config``.

    Attributes:
        params, grads: parameter and gradient arrays by name (empty for parameter-free layers).
        buffers: non-trained state saved with the model (e.g. running statistics).
        training: True in training mode (dropout active), False after ``eval()``.
        need_input_grad: False for a network's first layer, which then skips computing dx.
        samples_independent: True when each sample's output depends on that sample alone and
            no random numbers are drawn (False for batch norm and dropout), so a batch may be
            processed in chunks with the same result.
    """

    samples_independent = True

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

    __call__ = forward

    def describe(self) -> str:
        """A few words on the layer's settings for ``summary()`` (e.g. ``"5x5, stride 1"``)."""
        return ""

    def get_config(self) -> dict:
        """Constructor arguments as JSON-able values (used by checkpoints)."""
        return {"dtype": self.dtype_name, "name": self.name}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "name")
        return f"{type(self).__name__}({args})"


def _padding_spec(padding, padding_mode):
    """Validated ``(padding, padding_mode)``: a mode string or an (ph, pw) tuple."""
    check_padding(padding)
    check_padding_mode(padding_mode)
    if isinstance(padding, str):
        return padding, padding_mode
    return tuple(padding if isinstance(padding, (tuple, list)) else (padding, padding)), padding_mode


def _padding_text(layer) -> str:
    pad = layer.padding if isinstance(layer.padding, str) else _hw(layer.padding)
    return pad + (", replicate" if layer.padding_mode == "replicate" else "")


def _maybe_build_now(layer: Layer, input_shape, device, seed) -> None:
    if input_shape is not None:
        layer.build(input_shape, get_backend(device), get_backend(device).rng(seed))


class Conv2D(Layer):
    """2-D convolution with zero padding.

    Args:
        out_channels: number of filters F.
        kernel_size: int or (kh, kw).
        stride: int or (sh, sw), default 1.
        padding: int, (ph, pw), ``"valid"`` (0) or ``"same"`` (TensorFlow's rule, see
            :mod:`portacnn.kernels.shapes`).
        padding_mode: ``"zeros"`` (default) or ``"replicate"`` (edge pixels repeated).
        in_channels: C; if given, the layer is built at once on ``device``.
        bias: learn a per-filter bias (zeros at init).
        init: ``"glorot"`` (uniform, for tanh/sigmoid) or ``"he"`` (normal, for ReLU).
        dtype: ``"float32"`` or ``"float64"``; by default the model's dtype (float32 for a
            layer used alone).
        device, seed: backend and seed of the initial weights when built at once.

    Shapes: x (N, C, H, W) -> y (N, F, OH, OW); weight (F, C, kh, kw); bias (F,).

    After ``eval()`` the layer keeps no cache and computes for inference
    (``conv2d_forward(inference=True)``): ``y`` is then a strided view with the batch
    innermost in memory, equal to the training-mode output up to float rounding (the
    products are summed in another order).
    """

    def __init__(self, out_channels: int, kernel_size, stride=1, padding=0, *, in_channels=None,
                 bias: bool = True, init: str = "glorot", padding_mode: str = "zeros",
                 dtype: str | None = None, device=None, seed=None, name=None):
        super().__init__(dtype=dtype, name=name)
        if not isinstance(out_channels, int) or out_channels <= 0:
            raise ValueError(f"out_channels must be a positive int, got {out_channels!r}")
        if init not in ("glorot", "he"):
            raise ValueError(f"init must be 'glorot' or 'he', got {init!r}")
        self.out_channels = out_channels
        self.kernel_size = kernel_pair(kernel_size)
        self.stride = stride_pair(stride)
        self.padding, self.padding_mode = _padding_spec(padding, padding_mode)
        self.in_channels = in_channels
        self.use_bias = bias
        self.init = init
        self.seed = seed
        _maybe_build_now(self, None if in_channels is None else (in_channels, None, None),
                         device, seed)

    def output_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"{self.name} expects (C, H, W) inputs, got {tuple(input_shape)}")
        c, h, w = input_shape
        if self.in_channels is not None and c != self.in_channels:
            raise ValueError(f"{self.name} expects {self.in_channels} input channel(s), got {c}")
        if h is None:
            return (self.out_channels, None, None)
        g = geometry((h, w), self.kernel_size, self.stride, self.padding, self.padding_mode)
        return (self.out_channels, g.oh, g.ow)

    def build(self, input_shape, backend=None, rng=None):
        out = super().build(input_shape, backend, rng)
        if input_shape[1] is None:     # built from in_channels alone: any H, W accepted
            self.input_shape = None
        return out

    @property
    def _strict_shape(self):
        return self.input_shape is not None

    def describe(self):
        kh, kw = self.kernel_size
        return f"{self.out_channels}@{kh}x{kw}, stride {_hw(self.stride)}, pad {_padding_text(self)}"

    def param_shapes(self, input_shape):
        kh, kw = self.kernel_size
        shapes = {"weight": (self.out_channels, input_shape[0], kh, kw)}
        if self.use_bias:
            shapes["bias"] = (self.out_channels,)
        return shapes

    def _build(self, input_shape, rng):
        c = input_shape[0]
        self.in_channels = c
        kh, kw = self.kernel_size
        fan_in, fan_out = c * kh * kw, self.out_channels * kh * kw
        shapes = self.param_shapes(input_shape)
        self.params["weight"] = _init_weight(rng, shapes["weight"], fan_in, fan_out, self.init,
                                             self.dtype_name)
        if self.use_bias:
            self.params["bias"] = self.xp.zeros(shapes["bias"], dtype=self.dtype,
                                                device=self.backend.device)

    def forward(self, x):
        if x.ndim != 4:
            check_nchw(x, f"the input to {self.name}")
        if self.built and x.shape[1] != self.in_channels:
            raise ValueError(
                f"{self.name} expects {self.in_channels} input channel(s) but the input has "
                f"{x.shape[1]} (shape {tuple(x.shape)}, NCHW)"
            )
        return super().forward(x)

    def _forward(self, x):
        y, cache = self.kernels.conv2d_forward(
            x, self.params["weight"], self.params.get("bias"), self.stride, self.padding,
            self.padding_mode, inference=not self.training)
        self._cache = cache
        return y

    def _backward(self, dy):
        dx, dw, db = self.kernels.conv2d_backward(dy, self.params["weight"], self._cache,
                                                  need_dx=self.need_input_grad)
        self.grads["weight"] = dw
        if self.use_bias:
            self.grads["bias"] = db
        return dx

    def get_config(self):
        return {"out_channels": self.out_channels, "kernel_size": list(self.kernel_size),
                "stride": list(self.stride),
                "padding": self.padding if isinstance(self.padding, str) else list(self.padding),
                "in_channels": self.in_channels, "bias": self.use_bias, "init": self.init,
                "padding_mode": self.padding_mode, **super().get_config()}


def _hw(pair) -> str:
    return str(pair[0]) if pair[0] == pair[1] else f"{pair[0]}x{pair[1]}"


def _init_weight(rng: PortableRNG, shape, fan_in, fan_out, init, dtype):
    if init == "he":
        return rng.normal(shape, std=math.sqrt(2.0 / fan_in), dtype=dtype)
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(shape, -limit, limit, dtype=dtype)


class _Pool2D(Layer):
    def _kernel_pair(self):
        """This pooling's ``(forward, backward)`` kernels from the backend's set."""
        raise NotImplementedError

    def __init__(self, kernel_size=2, stride=None, padding=0, *, padding_mode="zeros",
                 dtype=None, name=None):
        super().__init__(dtype=dtype, name=name)
        self.kernel_size = kernel_pair(kernel_size)
        self.stride = self.kernel_size if stride is None else stride_pair(stride)
        self.padding, self.padding_mode = _padding_spec(padding, padding_mode)

    def output_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"{self.name} expects (C, H, W) inputs, got {tuple(input_shape)}")
        c, h, w = input_shape
        g = geometry((h, w), self.kernel_size, self.stride, self.padding, self.padding_mode)
        return (c, g.oh, g.ow)

    _strict_shape = False

    def describe(self):
        pad = _padding_text(self)
        return f"{self.kernel_size[0]}x{self.kernel_size[1]}, stride {_hw(self.stride)}" + (
            f", pad {pad}" if pad not in ("0", "valid") else "")

    def forward(self, x):
        check_nchw(x, f"the input to {self.name}")
        return super().forward(x)

    def _forward(self, x):
        forward, _ = self._kernel_pair()
        y, self._cache = forward(x, self.kernel_size, self.stride, self.padding,
                                 self.padding_mode, inference=not self.training)
        return y

    def _backward(self, dy):
        _, backward = self._kernel_pair()
        return backward(dy, self._cache)

    def get_config(self):
        return {"kernel_size": list(self.kernel_size), "stride": list(self.stride),
                "padding": self.padding if isinstance(self.padding, str) else list(self.padding),
                "padding_mode": self.padding_mode, **super().get_config()}


class MaxPool2D(_Pool2D):
    """Max pooling (pads with -inf). Gradient goes to the first maximum of each window.

    Args: kernel_size (int or pair, default 2), stride (default: the kernel size), padding.
    Shapes: (N, C, H, W) -> (N, C, OH, OW).
    """

    def _kernel_pair(self):
        return self.kernels.max_pool2d_forward, self.kernels.max_pool2d_backward


class MinPool2D(_Pool2D):
    """Min pooling (pads with +inf). Gradient goes to the first minimum of each window.

    Args: kernel_size (int or pair, default 2), stride (default: the kernel size), padding,
    padding_mode. Shapes: (N, C, H, W) -> (N, C, OH, OW).
    """

    def _kernel_pair(self):
        return self.kernels.min_pool2d_forward, self.kernels.min_pool2d_backward


class AvgPool2D(_Pool2D):
    """Average pooling (zero padding counted in the mean, like PyTorch's default).

    Args: kernel_size (int or pair, default 2), stride (default: the kernel size), padding.
    Shapes: (N, C, H, W) -> (N, C, OH, OW).
    """

    def _kernel_pair(self):
        return self.kernels.avg_pool2d_forward, self.kernels.avg_pool2d_backward


class Dense(Layer):
    """Fully connected layer ``y = x W^T + b``.

    Args:
        out_features: output width.
        in_features: input width; if given, the layer is built at once on ``device``.
        bias, init, dtype, device, seed: as for :class:`Conv2D`.

    Shapes: x (N, in_features) -> y (N, out_features); weight (out_features, in_features).
    """

    def __init__(self, out_features: int, *, in_features=None, bias: bool = True,
                 init: str = "glorot", dtype: str | None = None, device=None, seed=None,
                 name=None):
        super().__init__(dtype=dtype, name=name)
        if not isinstance(out_features, int) or out_features <= 0:
            raise ValueError(f"out_features must be a positive int, got {out_features!r}")
        if init not in ("glorot", "he"):
            raise ValueError(f"init must be 'glorot' or 'he', got {init!r}")
        self.out_features = out_features
        self.in_features = in_features
        self.use_bias = bias
        self.init = init
        self.seed = seed
        _maybe_build_now(self, None if in_features is None else (in_features,), device, seed)

    def output_shape(self, input_shape):
        if len(input_shape) != 1:
            raise ValueError(
                f"{self.name} expects flat (features,) inputs, got {tuple(input_shape)}: "
                "put a Flatten layer before it"
            )
        if self.in_features is not None and input_shape[0] != self.in_features:
            raise ValueError(
                f"{self.name} expects {self.in_features} input features, got {input_shape[0]}"
            )
        return (self.out_features,)

    def describe(self):
        return f"{self.in_features} -> {self.out_features}"

    def param_shapes(self, input_shape):
        shapes = {"weight": (self.out_features, input_shape[0])}
        if self.use_bias:
            shapes["bias"] = (self.out_features,)
        return shapes

    def _build(self, input_shape, rng):
        self.in_features = input_shape[0]
        shapes = self.param_shapes(input_shape)
        self.params["weight"] = _init_weight(rng, shapes["weight"], self.in_features,
                                             self.out_features, self.init, self.dtype_name)
        if self.use_bias:
            self.params["bias"] = self.xp.zeros(shapes["bias"], dtype=self.dtype,
                                                device=self.backend.device)

    def forward(self, x):
        if x.ndim != 2:
            raise ValueError(
                f"{self.name} expects a 2-D input (N, features), got shape {tuple(x.shape)}: "
                "put a Flatten layer before it"
            )
        return super().forward(x)

    def _forward(self, x):
        self._cache = x if self.training else None
        return self.kernels.dense_forward(x, self.params["weight"], self.params.get("bias"))

    def _backward(self, dy):
        dx, dw, db = self.kernels.dense_backward(dy, self._cache, self.params["weight"],
                                                need_dx=self.need_input_grad)
        self.grads["weight"] = dw
        if self.use_bias:
            self.grads["bias"] = db
        return dx

    def get_config(self):
        return {"out_features": self.out_features, "in_features": self.in_features,
                "bias": self.use_bias, "init": self.init, **super().get_config()}


class Upsample2D(Layer):
    """Nearest-neighbour upsampling: every pixel becomes an (rh, rw) block.

    Args: scale (int or (rh, rw), default 2). Shapes: (N, C, H, W) -> (N, C, H*rh, W*rw).
    Backward sums the gradient over each block.
    """

    _strict_shape = False

    def __init__(self, scale=2, *, dtype=None, name=None):
        super().__init__(dtype=dtype, name=name)
        try:
            self.scale = kernel_pair(scale)
        except (TypeError, ValueError):
            raise ValueError(f"scale must be a positive int or pair, got {scale!r}") from None

    def output_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"{self.name} expects (C, H, W) inputs, got {tuple(input_shape)}")
        c, h, w = input_shape
        return (c, h * self.scale[0], w * self.scale[1])

    def describe(self):
        return f"x{self.scale[0]}" if self.scale[0] == self.scale[1] else f"x{self.scale}"

    def forward(self, x):
        check_nchw(x, f"the input to {self.name}")
        return super().forward(x)

    def _forward(self, x):
        self._cache = True
        return self.kernels.upsample_nearest_forward(x, self.scale)

    def _backward(self, dy):
        return self.kernels.upsample_nearest_backward(dy, self.scale)

    def get_config(self):
        return {"scale": list(self.scale), **super().get_config()}


class _BatchNorm(Layer):
    _ndim = None
    samples_independent = False      # batch statistics couple the samples

    def __init__(self, num_features=None, *, eps: float = 1e-5, momentum: float = 0.1,
                 dtype=None, device=None, name=None):
        super().__init__(dtype=dtype, name=name)
        if num_features is not None and (not isinstance(num_features, int) or num_features <= 0):
            raise ValueError(f"num_features must be a positive int, got {num_features!r}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum!r}")
        if not eps > 0:
            raise ValueError(f"eps must be positive, got {eps!r}")
        self.num_features = num_features
        self.eps, self.momentum = float(eps), float(momentum)
        shape = None if num_features is None else (num_features,) + (None,) * (self._ndim - 2)
        _maybe_build_now(self, shape, device, None)

    def output_shape(self, input_shape):
        if len(input_shape) != self._ndim - 1:
            raise ValueError(f"{self.name} expects {self._ndim}-D input, i.e. per-sample shape of "
                             f"{self._ndim - 1} axes, got {tuple(input_shape)}")
        if self.num_features is not None and input_shape[0] != self.num_features:
            raise ValueError(f"{self.name} has {self.num_features} features, got "
                             f"{input_shape[0]}")
        return tuple(input_shape)

    _strict_shape = False

    def param_shapes(self, input_shape):
        return {"weight": (input_shape[0],), "bias": (input_shape[0],)}

    def _build(self, input_shape, rng):
        self.num_features = c = input_shape[0]
        xp, dev = self.xp, self.backend.device
        self.params["weight"] = xp.ones((c,), dtype=self.dtype, device=dev)
        self.params["bias"] = xp.zeros((c,), dtype=self.dtype, device=dev)
        self.buffers["running_mean"] = xp.zeros((c,), dtype=self.dtype, device=dev)
        self.buffers["running_var"] = xp.ones((c,), dtype=self.dtype, device=dev)

    def describe(self):
        return f"{self.num_features}, momentum {self.momentum}"

    def forward(self, x):
        if x.ndim != self._ndim:
            raise ValueError(f"{self.name} expects {self._ndim}-D input, got shape {tuple(x.shape)}")
        return super().forward(x)

    def _forward(self, x):
        y, cache, mean, var = self.kernels.batchnorm_forward(
            x, self.params["weight"], self.params["bias"], self.buffers["running_mean"],
            self.buffers["running_var"], training=self.training, momentum=self.momentum,
            eps=self.eps)
        self.buffers["running_mean"], self.buffers["running_var"] = mean, var
        self._cache = cache if self.training else None
        return y

    def _backward(self, dy):
        dx, self.grads["weight"], self.grads["bias"] = self.kernels.batchnorm_backward(
            dy, self._cache)
        return dx

    def get_config(self):
        return {"num_features": self.num_features, "eps": self.eps, "momentum": self.momentum,
                **super().get_config()}


class BatchNorm2D(_BatchNorm):
    """Batch normalisation of (N, C, H, W) input per channel, over (N, H, W).

    Learnable scale ``params["weight"]`` (ones) and shift ``params["bias"]`` (zeros), shape (C,);
    ``buffers["running_mean"]`` / ``["running_var"]`` updated with ``momentum`` in training (as in
    PyTorch: unbiased variance) and used in eval mode. Saved with checkpoints.
    """

    _ndim = 4


class BatchNorm1D(_BatchNorm):
    """Batch normalisation of (N, F) dense activations per feature, over N (see
    :class:`BatchNorm2D`)."""

    _ndim = 2


class Flatten(Layer):
    """(N, C, H, W) -> (N, C*H*W), row-major (as ``torch.flatten(x, 1)``)."""

    _strict_shape = False

    def output_shape(self, input_shape):
        return (math.prod(input_shape),)

    def _forward(self, x):
        self._cache = tuple(x.shape)
        return self.xp.reshape(x, (x.shape[0], math.prod(x.shape[1:])))   # -1 fails for N=0

    def _backward(self, dy):
        return self.xp.reshape(dy, self._cache)


class _Activation(Layer):
    _strict_shape = False
    _keeps_output = True     # tanh/sigmoid: derivative from y; relu: from x

    def _kernel_pair(self):
        """This activation's ``(function, backward)`` kernels from the backend's set."""
        raise NotImplementedError

    def _forward(self, x):
        fn, _ = self._kernel_pair()
        y = fn(x)
        if self.training:
            self._cache = y if self._keeps_output else x
        return y

    def _backward(self, dy):
        _, grad = self._kernel_pair()
        return grad(dy, self._cache)


class ReLU(_Activation):
    """``max(x, 0)`` elementwise; any input shape."""

    _keeps_output = False

    def _kernel_pair(self):
        return self.kernels.relu, self.kernels.relu_backward


class Tanh(_Activation):
    """Hyperbolic tangent elementwise; any input shape."""

    def _kernel_pair(self):
        return self.kernels.tanh, self.kernels.tanh_backward


class Sigmoid(_Activation):
    """Logistic sigmoid elementwise (overflow-free); any input shape."""

    def _kernel_pair(self):
        return self.kernels.sigmoid, self.kernels.sigmoid_backward


class Dropout(Layer):
    """Inverted dropout: in training, zero each unit with probability ``p`` and scale the rest
    by ``1/(1-p)``; in eval mode, the identity.

    Masks are drawn from the portable RNG (float32 on the host, moved once in the working
    dtype), so a seeded run drops the same units on every backend.
    """

    _strict_shape = False
    samples_independent = False      # masks come from one draw per batch

    def __init__(self, p: float = 0.5, *, seed=None, dtype=None, name=None):
        super().__init__(dtype=dtype, name=name)
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability p must be in [0, 1), got {p!r}")
        self.p = float(p)
        self.seed = seed
        self._rng = None

    def _build(self, input_shape, rng):
        self._rng = rng

    @property
    def rng(self):
        """The generator the masks are drawn from: the model's :class:`PortableRNG`, or the
        layer's own when it has a ``seed`` (anything with ``bernoulli(shape, keep, dtype)``
        may replace it: :mod:`portacnn.distributed` does, to draw whole-batch masks)."""
        if self._rng is None:
            self._rng = self.backend.rng(self.seed)
        return self._rng

    @rng.setter
    def rng(self, rng):
        self._rng = rng

    def to(self, device, dtype: str | None = None) -> "Dropout":
        super().to(device, dtype)
        if self._rng is not None and self.built:
            self._rng.backend = self.backend     # the same stream of masks, on the new device
        return self

    def _forward(self, x):
        if not self.training or self.p == 0.0:
            self._cache = "identity"
            return x
        mask = self.rng.bernoulli(tuple(x.shape), 1.0 - self.p, dtype=x.dtype)
        self._cache = mask
        return self.kernels.dropout_forward(x, mask, self.p)

    def _backward(self, dy):
        if isinstance(self._cache, str):
            return dy
        return self.kernels.dropout_backward(dy, self._cache, self.p)

    def describe(self):
        return f"p={self.p}"

    def get_config(self):
        return {"p": self.p, "seed": self.seed, **super().get_config()}


LAYERS = {cls.__name__: cls for cls in (Conv2D, MaxPool2D, MinPool2D, AvgPool2D, Upsample2D,
                                        BatchNorm2D, BatchNorm1D, Dense, Flatten, ReLU, Tanh,
                                        Sigmoid, Dropout)}
