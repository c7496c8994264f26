"""Faster CPU pooling: the NumPy backend's max, min and average pooling kernels.

Each takes the same arguments and returns the same values as the portable kernel of its name
(:mod:`.pooling`), and is tested against it and the naive loops; like the CPU convolution it
writes into arrays it has just made, which JAX does not allow.

**Pooling**: the forward passes are separable: the kw column-strided slices of the padded
input are combined into (N, C, Hp, OW), then the kh row-strided slices of that into
(N, C, OH, OW): kh + kw elementwise passes and no (N, C, kh*kw, OH, OW) stack. Max pooling
keeps, per element, the offset of the first maximum in row-major order (a strict ``>`` keeps
the earlier offset on ties), as the portable kernel's ``argmax`` does. The backward passes add
one output-sized gradient per window offset into a strided slice of the padded input gradient,
and assign it instead where windows cannot overlap (stride >= kernel, as in LeNet). Masks are
applied by multiplying with 0/1 rather than by ``where``: NumPy's ``where`` branches per
element, and after a random input the branches are mispredicted.
"""

from __future__ import annotations

import functools

from ..namespace import namespace
from .pooling import PoolCache, pool_geometry
from .shapes import Geometry
from .columns import window_slice
from .padding import pad, unpad

__all__ = ["max_pool2d_forward", "max_pool2d_backward", "min_pool2d_forward",
           "min_pool2d_backward", "avg_pool2d_forward", "avg_pool2d_backward"]


def _column_slices(xpad, g: Geometry):
    """The kw column-strided slices of a padded (N, C, Hp, Wp) input, each (N, C, Hp, OW)."""
    return [xpad[:, :, :, g.cols_at(j)] for j in range(g.kw)]


def _row_slices(a, g: Geometry):
    """The kh row-strided slices of an (N, C, Hp, OW) array, each (N, C, OH, OW)."""
    return [a[:, :, g.rows_at(i), :] for i in range(g.kh)]


def _reduce_windows(xpad, g: Geometry, combine):
    """``combine`` (``xp.add``, ``xp.maximum``) over each window of a padded (N, C, Hp, Wp)
    array, separably: over the column slices, then the row slices. Returns (N, C, OH, OW)."""
    along_rows = functools.reduce(combine, _column_slices(xpad, g))
    return functools.reduce(combine, _row_slices(along_rows, g))


def _first_max(slices, labels):
    """Elementwise max over ``slices`` and, per element, the label (an int or an int16 array)
    of the first slice that holds it."""
    xp = namespace(slices[0])
    best = slices[0]
    arg = xp.zeros(tuple(best.shape), dtype=xp.int16, device=best.device) + labels[0]
    for s, label in zip(slices[1:], labels[1:]):
        later = xp.astype(s > best, xp.int16)      # strict: ties keep the earlier slice
        arg = arg + later * (label - arg)           # where(later, label, arg), branch-free
        best = xp.maximum(best, s)
    return best, arg


def _spread(part, g: Geometry, input_shape):
    """Sum one output-sized (N, C, OH, OW) gradient per window offset, ``part(k)`` for offset
    k = i*kw + j, into a padded buffer and undo the padding: (N, C, H, W). Windows that cannot
    overlap (stride >= kernel) are assigned rather than added."""
    n, c, h, w = input_shape
    overlap = g.sh < g.kh or g.sw < g.kw
    first = part(0)
    xp = namespace(first)
    buf = xp.zeros((n, c) + g.padded_hw(h, w), dtype=first.dtype, device=first.device)
    for k in range(g.window):
        key = window_slice(g, k // g.kw, k % g.kw)
        value = first if k == 0 else part(k)
        if overlap:
            buf[key] += value
        else:
            buf[key] = value
    return unpad(buf, g)


def max_pool2d_forward(x, kernel_size, stride=None, padding=0, padding_mode="zeros", *,
                       inference: bool = False):
    """:func:`portacnn.kernels.pooling.max_pool2d_forward`, separable. Returns ``(y, cache)``,
    y (N, C, OH, OW); the cache's ``argmax`` is the int16 window offset of each first maximum."""
    xp = namespace(x)
    g = pool_geometry(x, kernel_size, stride, padding, padding_mode)
    xpad = pad(x, g, -float("inf"))
    if inference:
        y = _reduce_windows(xpad, g, xp.maximum)
    else:
        # the column of each row's first maximum, then the first row holding the window's
        row_max, col_arg = _first_max(_column_slices(xpad, g), list(range(g.kw)))
        row_labels = [a + i * g.kw for i, a in enumerate(_row_slices(col_arg, g))]
        y, argmax = _first_max(_row_slices(row_max, g), row_labels)
    if g.window == 1:
        y = xp.asarray(y, copy=True)                   # never hand out a view of x
    return y, None if inference else PoolCache(argmax, g, tuple(x.shape))


def max_pool2d_backward(dy, cache: PoolCache):
    """Route ``dy`` (N, C, OH, OW) to the first maximum of each window. Returns dx."""
    xp = namespace(dy)
    argmax, g, input_shape = cache
    # dy times a 0/1 mask rather than where (see the module docstring)
    return _spread(lambda k: dy * xp.astype(argmax == k, dy.dtype), g, input_shape)


def min_pool2d_forward(x, kernel_size, stride=None, padding=0, padding_mode="zeros", *,
                       inference: bool = False):
    """Min over each window: max pooling of ``-x``. Returns ``(y, cache)``."""
    y, cache = max_pool2d_forward(-x, kernel_size, stride, padding, padding_mode,
                                  inference=inference)
    return -y, cache


def min_pool2d_backward(dy, cache: PoolCache):
    """Route ``dy`` to the first minimum of each window (the routing of max pooling of -x)."""
    return max_pool2d_backward(dy, cache)


def avg_pool2d_forward(x, kernel_size, stride=None, padding=0, padding_mode="zeros", *,
                       inference: bool = False):
    """Mean over each window (padding counted), from separable window sums. Returns
    ``(y, cache)``."""
    xp = namespace(x)
    g = pool_geometry(x, kernel_size, stride, padding, padding_mode)
    y = _reduce_windows(pad(x, g), g, xp.add) * (1.0 / g.window)
    return y, None if inference else PoolCache(None, g, tuple(x.shape))


def avg_pool2d_backward(dy, cache: PoolCache):
    """Spread ``dy / (kh*kw)`` evenly over each window. Returns dx (N, C, H, W)."""
    _, g, input_shape = cache
    share = dy * (1.0 / g.window)
    return _spread(lambda k: share, g, input_shape)
