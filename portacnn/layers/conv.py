"""The convolution layer :class:`Conv2D`: weight (F, C, kh, kw), bias (F,), NCHW input; the
math is ``self.kernels.conv2d_forward`` / ``conv2d_backward``."""

from __future__ import annotations

from ..kernels.conv import check_groups
from ..kernels.shapes import check_nchw, geometry, kernel_pair, stride_pair
from ..scalars import positive_int, seed_or_none
from .base import Layer, _init_weight, _maybe_build_now
from .windows import _hw, _padding_spec, _padding_text


class Conv2D(Layer):
    """2-D convolution with zero padding.

    Args:
        out_channels: number of filters F.
        kernel_size: int or (kh, kw).
        stride: int or (sh, sw), default 1.
        padding: int, (ph, pw), ``"valid"`` (0) or ``"same"`` (TensorFlow's rule, see
            :mod:`portacnn.kernels.shapes`).
        padding_mode: ``"zeros"`` (default) or ``"replicate"`` (edge pixels repeated).
        groups: split the channels into this many independent convolutions, each taking
            C/groups input channels to F/groups filters; C and F must be multiples of it.
            ``groups=C`` is a depthwise convolution (with F = C, one filter per channel).
        in_channels: C; if given, the layer is built at once on ``device``.
        bias: learn a per-filter bias (zeros at init).
        init: ``"glorot"`` (uniform, for tanh/sigmoid) or ``"he"`` (normal, for ReLU).
        dtype: ``"float32"`` or ``"float64"``; by default the model's dtype (float32 for a
            layer used alone).
        device, seed: backend and seed of the initial weights when built at once.

    Shapes: x (N, C, H, W) -> y (N, F, OH, OW); weight (F, C/groups, kh, kw); bias (F,).
    Initial weights are scaled by the connections a filter really has: fan in
    C/groups*kh*kw, fan out F/groups*kh*kw.

    After ``eval()`` the layer keeps no cache and computes for inference
    (``conv2d_forward(inference=True)``): ``y`` is then a strided view with the batch
    innermost in memory, equal to the training-mode output up to float rounding (the
    products are summed in another order).
    """

    def __init__(self, out_channels: int, kernel_size, stride=1, padding=0, *, in_channels=None,
                 bias: bool = True, init: str = "glorot", padding_mode: str = "zeros",
                 groups: int = 1, dtype: str | None = None, device=None, seed=None,
                 name=None):
        super().__init__(dtype=dtype, name=name)
        out_channels = positive_int(out_channels, "out_channels")
        if init not in ("glorot", "he"):
            raise ValueError(f"init must be 'glorot' or 'he', got {init!r}")
        self.out_channels = out_channels
        self.kernel_size = kernel_pair(kernel_size)
        self.stride = stride_pair(stride)
        self.padding, self.padding_mode = _padding_spec(padding, padding_mode)
        self.in_channels = None if in_channels is None else positive_int(in_channels,
                                                                          "in_channels")
        self.groups = check_groups(groups, self.in_channels, out_channels)
        self.use_bias = bias
        self.init = init
        self.seed = seed_or_none(seed)
        _maybe_build_now(self, None if in_channels is None else (self.in_channels, None, None),
                         device, self.seed)

    def output_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"{self.name} expects (C, H, W) inputs, got {tuple(input_shape)}")
        c, h, w = input_shape
        if self.in_channels is not None and c != self.in_channels:
            raise ValueError(f"{self.name} expects {self.in_channels} input channel(s), got {c}")
        check_groups(self.groups, c, self.out_channels)
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
        text = (f"{self.out_channels}@{kh}x{kw}, stride {_hw(self.stride)}, "
                f"pad {_padding_text(self)}")
        return text if self.groups == 1 else f"{text}, groups {self.groups}"

    def param_shapes(self, input_shape):
        kh, kw = self.kernel_size
        shapes = {"weight": (self.out_channels, input_shape[0] // self.groups, kh, kw)}
        if self.use_bias:
            shapes["bias"] = (self.out_channels,)
        return shapes

    def _build(self, input_shape, rng):
        c = input_shape[0]
        self.in_channels = c
        kh, kw = self.kernel_size
        fan_in = c // self.groups * kh * kw
        fan_out = self.out_channels // self.groups * kh * kw
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
            self.padding_mode, groups=self.groups, inference=not self.training)
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
                "padding_mode": self.padding_mode, "groups": self.groups,
                **super().get_config()}
