"""Pooling layers over (N, C, H, W) input: :class:`MaxPool2D`, :class:`MinPool2D`,
:class:`AvgPool2D`, each naming its ``(forward, backward)`` pair from the backend's kernel set,
and :class:`GlobalAvgPool2D`, (N, C, H, W) -> (N, C)."""

from __future__ import annotations

from ..kernels.shapes import check_nchw, geometry, kernel_pair, stride_pair
from .base import Layer
from .windows import _hw, _padding_spec, _padding_text


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


class GlobalAvgPool2D(Layer):
    """Global average pooling: the mean of each channel over the whole image, as Keras'
    ``GlobalAveragePooling2D`` or PyTorch's ``AdaptiveAvgPool2d(1)`` followed by a flatten.

    Takes any image size (the classifier head of ResNet and similar networks).
    Shapes: (N, C, H, W) -> (N, C). Backward shares each gradient equally over its channel.
    """

    _strict_shape = False

    def output_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"{self.name} expects (C, H, W) inputs, got {tuple(input_shape)}")
        return (input_shape[0],)

    def forward(self, x):
        check_nchw(x, f"the input to {self.name}")
        return super().forward(x)

    def _forward(self, x):
        y, self._cache = self.kernels.global_avg_pool2d_forward(x, inference=not self.training)
        return y

    def _backward(self, dy):
        return self.kernels.global_avg_pool2d_backward(dy, self._cache)
