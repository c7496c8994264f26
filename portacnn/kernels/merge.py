"""Merging several tensors into one: elementwise sum and concatenation, with their backward
passes (the kernels of :class:`portacnn.Add` and :class:`portacnn.Concatenate`).

Shapes: ``add_forward`` takes k arrays of one shape (N, ...) and returns their sum (N, ...);
its backward hands the same gradient to every input. ``concatenate_forward`` joins k arrays
along ``axis`` (counted with the batch axis, as Keras: 1 is the channels of NCHW) and returns
the sizes along that axis, from which its backward cuts the gradient back into k pieces.
Nothing is written into an existing array: the pieces are slices of the gradient.
"""

from __future__ import annotations

from ..namespace import namespace

__all__ = ["add_forward", "add_backward", "concatenate_forward", "concatenate_backward"]


def _shape_problem(xs) -> str:
    return ", ".join(str(tuple(x.shape)) for x in xs)


def add_forward(xs):
    """The elementwise sum of ``xs`` (a list of k >= 1 arrays of one shape), added in order."""
    namespace(*xs)                          # one library, one device
    if len({tuple(x.shape) for x in xs}) != 1:
        raise ValueError(f"add needs arrays of one shape, got {_shape_problem(xs)}")
    y = xs[0]
    for x in xs[1:]:
        y = y + x
    return y


def add_backward(dy, count: int) -> list:
    """The gradients of the ``count`` inputs of a sum: ``dy`` each (the same array)."""
    return [dy] * count


def _axis(axis: int, ndim: int) -> int:
    """``axis`` (negative counts from the end) as an index in ``[1, ndim)``; the batch axis 0
    cannot be joined along."""
    resolved = axis + ndim if axis < 0 else axis
    if not 1 <= resolved < ndim:
        raise ValueError(f"axis {axis} is not a non-batch axis of a {ndim}-d array "
                         f"(choose one of 1..{ndim - 1}, or -1..-{ndim - 1})")
    return resolved


def concatenate_forward(xs, axis: int = 1):
    """``xs`` (k arrays equal in shape except along ``axis``) joined along ``axis``.

    Returns ``(y, sizes)``: ``y`` has the sum of the inputs' sizes along ``axis``, ``sizes``
    (a tuple of k ints) is what :func:`concatenate_backward` needs."""
    xp = namespace(*xs)
    ndim = xs[0].ndim
    if any(x.ndim != ndim for x in xs):
        raise ValueError(f"concatenate needs arrays of one rank, got {_shape_problem(xs)}")
    axis = _axis(axis, ndim)
    others = {tuple(x.shape[:axis]) + tuple(x.shape[axis + 1:]) for x in xs}
    if len(others) != 1:
        raise ValueError(f"concatenate along axis {axis} needs arrays equal in every other "
                         f"axis, got {_shape_problem(xs)}")
    return xp.concat(list(xs), axis=axis), tuple(int(x.shape[axis]) for x in xs)


def concatenate_backward(dy, sizes, axis: int = 1) -> list:
    """``dy`` cut along ``axis`` into pieces of ``sizes``: each input's gradient, in order."""
    axis = _axis(axis, dy.ndim)
    lead = (slice(None),) * axis
    pieces, start = [], 0
    for size in sizes:
        pieces.append(dy[lead + (slice(start, start + size), ...)])
        start += size
    return pieces
