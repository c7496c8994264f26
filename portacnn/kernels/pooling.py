"""Max, min and average pooling, forward and backward, over the same windows as im2col.

Shapes: x (N, C, H, W) -> y (N, C, OH, OW), each channel pooled on its own. ``stride`` defaults
to the kernel size (non-overlapping windows), as in PyTorch.

The forward passes are separable: combine the kw column-strided slices of the padded input
into (N, C, Hp, OW), then the kh row-strided slices of that into (N, C, OH, OW). No
(N, C, kh*kw, OH, OW) stack is built: on LeNet's pooling layers (NumPy, batch 64) this was
~10x faster than reducing a stacked or reshaped array.

Backward: non-overlapping windows (stride = kernel, no padding, as in LeNet) repeat each
output's gradient over its block (:func:`~portacnn.kernels.unfold.repeat_pixels`), ~3x faster
than adding strided slices; other geometries add one output-sized slice per window offset.

Max pooling pads with -inf and sends each output's gradient to exactly one input: the *first*
maximum of its window in row-major order, as PyTorch does (a strict ``>`` keeps the earliest
offset on ties; a ``x == max`` mask would split the gradient over ties, common after ReLU).

Min pooling is max pooling of ``-x``: the gradient goes to the first minimum.

Average pooling divides by the full window ``kh*kw``, padding included (PyTorch's default
``count_include_pad=True``). ``padding_mode="replicate"`` pads with the edge pixels instead of
a constant (0 for average, -inf for max).
"""

from __future__ import annotations

from typing import NamedTuple

from ..runtime import namespace
from .unfold import Geometry, check_nchw, geometry, pad, repeat_pixels, unpad, window_slice

__all__ = ["max_pool2d_forward", "max_pool2d_backward", "min_pool2d_forward",
           "min_pool2d_backward", "avg_pool2d_forward", "avg_pool2d_backward", "window_sum",
           "PoolCache"]


class PoolCache(NamedTuple):
    """What the pooling backward passes need: the window offset of each maximum (max only),
    the geometry and the input shape."""

    argmax: object
    geometry: Geometry
    input_shape: tuple


def _pool_geometry(x, kernel_size, stride, padding, padding_mode="zeros") -> Geometry:
    check_nchw(x)
    g = geometry(tuple(x.shape[2:]), kernel_size, kernel_size if stride is None else stride,
                 padding, padding_mode)
    # Wider padding would make windows of padding only (-inf for max), as PyTorch also refuses.
    if max(g.top, g.bottom) > g.kh // 2 or max(g.left, g.right) > g.kw // 2:
        if padding != "same":
            raise ValueError(
                f"pooling padding {padding!r} is more than half the kernel {g.kh}x{g.kw}: "
                "some windows would hold only padding; use padding <= kernel_size // 2"
            )
    return g


def _offsets(g: Geometry):
    return [(i, j) for i in range(g.kh) for j in range(g.kw)]


def _column_slices(xpad, g: Geometry):
    """The kw column-strided slices of a padded input, each (N, C, Hp, OW)."""
    return [xpad[:, :, :, g.cols_at(j)] for j in range(g.kw)]


def _row_slices(a, g: Geometry):
    """The kh row-strided slices of an (N, C, Hp, OW) array, each (N, C, OH, OW)."""
    return [a[:, :, g.rows_at(i), :] for i in range(g.kh)]


def _is_tiling(g: Geometry) -> bool:
    return (g.sh, g.sw) == (g.kh, g.kw) and not g.padded


def _fit_to_input(dx, input_shape):
    """Zero-extend a tiled gradient over the rows/columns the stride left out."""
    if tuple(dx.shape) == tuple(input_shape):
        return dx
    xp = namespace(dx)
    full = xp.zeros(tuple(input_shape), dtype=dx.dtype, device=dx.device)
    full[:, :, : dx.shape[2], : dx.shape[3]] = dx
    return full


def _spread(parts, g: Geometry, input_shape):
    """Sum output-sized gradients, one per window offset (``parts(k)``), back onto x."""
    n, c, h, w = input_shape
    first = parts(0)
    xp = namespace(first)
    buf = xp.zeros((n, c) + g.padded_hw(h, w), dtype=first.dtype, device=first.device)
    for k, (i, j) in enumerate(_offsets(g)):
        buf[window_slice(g, i, j)] += first if k == 0 else parts(k)
    return unpad(buf, g)


def _running_max(slices, labels):
    """Max over ``slices`` and, per element, the label of the first slice that holds it."""
    xp = namespace(slices[0])
    best, arg = slices[0], labels[0]
    for s, label in zip(slices[1:], labels[1:]):
        better = s > best                        # strict: ties keep the earlier slice
        arg = xp.where(better, label, arg)
        best = xp.maximum(best, s)
    return best, arg


def max_pool2d_forward(x, kernel_size, stride=None, padding=0, padding_mode="zeros"):
    """Max over each window. Returns ``(y, cache)``, y of shape (N, C, OH, OW)."""
    xp = namespace(x)
    g = _pool_geometry(x, kernel_size, stride, padding, padding_mode)
    cols = _column_slices(pad(x, g, -float("inf")), g)
    zero = xp.zeros(tuple(cols[0].shape), dtype=xp.int16, device=x.device)
    # first the column of each row's maximum, then the row: row-major first maximum
    row_max, col_arg = _running_max(cols, [zero] + [xp.asarray(j, dtype=xp.int16, device=x.device)
                                                    for j in range(1, g.kw)])
    col_args = _row_slices(col_arg, g)
    best, argmax = _running_max(_row_slices(row_max, g),
                                [a + i * g.kw for i, a in enumerate(col_args)])
    return best, PoolCache(argmax, g, tuple(x.shape))


def max_pool2d_backward(dy, cache: PoolCache):
    """Route ``dy`` (N, C, OH, OW) to the first maximum of each window. Returns dx."""
    xp = namespace(dy)
    argmax, g, input_shape = cache
    zero = xp.zeros((), dtype=dy.dtype, device=dy.device)
    if _is_tiling(g):
        h, w = g.oh * g.kh, g.ow * g.kw
        # offset of every pixel inside its own block: (i % kh) * kw + (j % kw)
        rows = xp.reshape((xp.arange(h, device=dy.device) % g.kh) * g.kw, (h, 1))
        cols = xp.reshape(xp.arange(w, device=dy.device) % g.kw, (1, w))
        chosen = repeat_pixels(argmax, (g.kh, g.kw)) == xp.astype(rows + cols, argmax.dtype)
        dx = xp.where(chosen, repeat_pixels(dy, (g.kh, g.kw)), zero)
        return _fit_to_input(dx, input_shape)
    return _spread(lambda k: xp.where(argmax == k, dy, zero), g, input_shape)


def min_pool2d_forward(x, kernel_size, stride=None, padding=0, padding_mode="zeros"):
    """Min over each window (padding +inf, or the edges). Returns ``(y, cache)``."""
    y, cache = max_pool2d_forward(-x, kernel_size, stride, padding, padding_mode)
    return -y, cache


def min_pool2d_backward(dy, cache: PoolCache):
    """Route ``dy`` to the first minimum of each window (the routing of max pooling of -x)."""
    return max_pool2d_backward(dy, cache)


def window_sum(xpad, g: Geometry):
    """Sum of each window of an already padded (N, C, Hp, Wp) array: (N, C, OH, OW).

    Separable: the kw column slices first, then the kh row slices of that.
    """
    cols = _column_slices(xpad, g)
    row_sum = cols[0] + cols[1] if g.kw > 1 else cols[0] * 1    # never alias the input
    for s in cols[2:]:
        row_sum += s
    rows = _row_slices(row_sum, g)
    total = rows[0] + rows[1] if g.kh > 1 else rows[0] * 1
    for s in rows[2:]:
        total += s
    return total


def avg_pool2d_forward(x, kernel_size, stride=None, padding=0, padding_mode="zeros"):
    """Mean over each window (padding counted). Returns ``(y, cache)``."""
    g = _pool_geometry(x, kernel_size, stride, padding, padding_mode)
    total = window_sum(pad(x, g), g)
    total *= 1.0 / g.window
    return total, PoolCache(None, g, tuple(x.shape))


def avg_pool2d_backward(dy, cache: PoolCache):
    """Spread ``dy / (kh*kw)`` evenly over each window. Returns dx (N, C, H, W)."""
    _, g, input_shape = cache
    share = dy * (1.0 / g.window)
    if _is_tiling(g):
        return _fit_to_input(repeat_pixels(share, (g.kh, g.kw)), input_shape)
    return _spread(lambda k: share, g, input_shape)
