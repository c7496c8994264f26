"""Elementwise activation layers: :class:`ReLU`, :class:`Tanh`, :class:`Sigmoid`; any input
shape."""

from __future__ import annotations

from .base import Layer


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
