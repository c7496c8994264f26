"""Layers of graph models (:class:`portacnn.Model`): :class:`Add` and :class:`Concatenate`
merge several tensors into one, :class:`Identity` passes one on unchanged.

A merging layer has ``multiple_inputs``: it is called on a list (``Add()([a, b])``), its
``forward`` takes a list of arrays, its ``backward`` returns one gradient per input, and its
``output_shape`` takes the list of the inputs' per-sample shapes. The math is
``self.kernels.add_forward`` / ``concatenate_forward`` and their backward passes
(:mod:`portacnn.kernels.merge`).
"""

from __future__ import annotations

from ..backends import backend_of, get_backend
from ..scalars import is_int
from .base import Layer


def _shape_text(shape) -> str:
    return f"(N, {', '.join(map(str, shape))})"


class _Merge(Layer):
    """A layer of several inputs and no parameters."""

    multiple_inputs = True

    def _shapes(self, input_shapes) -> tuple:
        """``input_shapes`` as a tuple of per-sample shapes, two or more."""
        if isinstance(input_shapes, tuple) and input_shapes and not isinstance(input_shapes[0],
                                                                                (tuple, list)):
            input_shapes = [input_shapes]
        shapes = tuple(tuple(shape) for shape in input_shapes)
        if len(shapes) < 2:
            raise ValueError(f"{self.name} merges two or more tensors, got {len(shapes)}")
        return shapes

    def build(self, input_shape, backend=None, rng=None) -> tuple:
        """Take the per-sample shapes of the inputs (a list); nothing to allocate."""
        shapes = self._shapes(input_shape)
        out = self.output_shape(shapes)
        self.backend = get_backend(backend)
        self.input_shape = shapes
        return out

    def forward(self, xs):
        """The merged output of ``xs``, a list of batches (N, ...) on one backend."""
        if not isinstance(xs, (list, tuple)) or len(xs) < 2:
            raise TypeError(f"{self.name} merges several arrays: call it on a list of two or "
                            f"more, {type(self).__name__}()([a, b])")
        shapes = [tuple(x.shape[1:]) for x in xs]
        if not self.built:
            self.build(shapes, backend_of(xs[0]))
        for x in xs:
            self.backend.check(x, f"an input to {self.name}")
        self.output_shape(shapes)
        with self.backend.activate():
            return self._forward(list(xs))


class Add(_Merge):
    """The elementwise sum of two or more tensors of one shape: ``Add()([a, b])``, the join of
    a residual block's skip connection. Any per-sample shape; backward hands each input the
    output's gradient."""

    def output_shape(self, input_shape):
        shapes = self._shapes(input_shape)
        if len(set(shapes)) != 1:
            raise ValueError(f"{self.name} adds tensors of one shape, got "
                             f"{' and '.join(map(_shape_text, shapes))}: make them agree (a "
                             "projection shortcut, a 1x1 Conv2D, changes the channels or size)")
        return shapes[0]

    def _forward(self, xs):
        if self.training:
            self._cache = len(xs)
        return self.kernels.add_forward(xs)

    def _backward(self, dy):
        return self.kernels.add_backward(dy, self._cache)


class Concatenate(_Merge):
    """Two or more tensors joined along ``axis``: ``Concatenate()([a, b])`` stacks the
    channels of (N, C1, H, W) and (N, C2, H, W) into (N, C1 + C2, H, W).

    Args:
        axis: counted with the batch axis, as in Keras (default 1: the channels of NCHW;
            negative counts from the end); the batch axis 0 cannot be joined along. The
            inputs agree in every other axis.
    """

    def __init__(self, axis: int = 1, *, dtype: str | None = None, name: str | None = None):
        super().__init__(dtype=dtype, name=name)
        if not is_int(axis) or axis == 0:
            raise ValueError(f"axis must be a non-zero int (0 is the batch axis), got {axis!r}")
        self.axis = int(axis)

    def _axis(self, rank: int) -> int:
        """The axis of the per-sample shapes (rank axes) that is joined."""
        axis = self.axis + rank + 1 if self.axis < 0 else self.axis
        if not 1 <= axis <= rank:
            raise ValueError(f"axis {self.axis} is not a non-batch axis of inputs of per-sample "
                             f"rank {rank}")
        return axis - 1

    def output_shape(self, input_shape):
        shapes = self._shapes(input_shape)
        if len({len(shape) for shape in shapes}) != 1:
            raise ValueError(f"{self.name} joins tensors of one rank, got "
                             f"{' and '.join(map(_shape_text, shapes))}")
        k = self._axis(len(shapes[0]))
        if len({shape[:k] + shape[k + 1:] for shape in shapes}) != 1:
            raise ValueError(f"{self.name} joins along axis {self.axis} tensors equal in every "
                             f"other axis, got {' and '.join(map(_shape_text, shapes))}")
        return shapes[0][:k] + (sum(shape[k] for shape in shapes),) + shapes[0][k + 1:]

    def describe(self):
        return f"axis {self.axis}"

    def _forward(self, xs):
        y, sizes = self.kernels.concatenate_forward(xs, self.axis)
        if self.training:
            self._cache = sizes
        return y

    def _backward(self, dy):
        return self.kernels.concatenate_backward(dy, self._cache, self.axis)

    def get_config(self):
        return {"axis": self.axis, **super().get_config()}


class Identity(Layer):
    """Its input unchanged (any shape): a named placeholder, e.g. the shortcut of a residual
    block whose shapes already agree."""

    _strict_shape = False

    def _forward(self, x):
        if self.training:
            self._cache = True
        return x

    def _backward(self, dy):
        return dy
