"""Nearest-neighbour upsampling, :class:`Upsample2D`: (N, C, H, W) -> (N, C, H*rh, W*rw)."""

from __future__ import annotations

from ..kernels.shapes import check_nchw, kernel_pair
from .base import Layer


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
