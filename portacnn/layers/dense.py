"""Layers on flat (N, features) input: :class:`Dense` (``y = x W^T + b``) and
:class:`Flatten`, which turns (N, C, H, W) maps into that input."""

from __future__ import annotations

import math

from ..kernels.shapes import batch_dim
from ..scalars import positive_int, seed_or_none
from .base import Layer, _init_weight, _maybe_build_now


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
        out_features = positive_int(out_features, "out_features")
        if init not in ("glorot", "he"):
            raise ValueError(f"init must be 'glorot' or 'he', got {init!r}")
        self.out_features = out_features
        self.in_features = None if in_features is None else positive_int(in_features,
                                                                          "in_features")
        self.use_bias = bias
        self.init = init
        self.seed = seed_or_none(seed)
        _maybe_build_now(self, None if in_features is None else (self.in_features,), device,
                         self.seed)

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


class Flatten(Layer):
    """(N, C, H, W) -> (N, C*H*W), row-major (as ``torch.flatten(x, 1)``)."""

    _strict_shape = False

    def output_shape(self, input_shape):
        return (math.prod(input_shape),)

    def _forward(self, x):
        self._cache = tuple(x.shape)
        return self.xp.reshape(x, (batch_dim(x), math.prod(x.shape[1:])))  # N itself: -1 fails for N=0

    def _backward(self, dy):
        return self.xp.reshape(dy, self._cache)
