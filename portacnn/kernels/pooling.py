"""Max and average pooling, forward and backward, over the same windows as im2col.

Shapes: x (N, C, H, W) -> y (N, C, OH, OW), each channel pooled on its own. ``stride`` defaults
to the kernel size (non-overlapping windows), as in PyTorch.

Both walk the kh*kw window offsets and combine one strided slice per offset into an
output-sized array, so no (N, C, kh*kw, OH, OW) stack is built: summing slices was ~10x
faster than reducing a stacked or reshaped array on LeNet's pooling layers (NumPy, batch 64).

Max pooling pads with -inf and sends each output's gradient to exactly one input: the *first*
maximum of its window in row-major order, as PyTorch does (a strict ``>`` keeps the earliest
offset on ties; a ``x == max`` mask would split the gradient over ties, common after ReLU).

Average pooling divides by the full window ``kh*kw``, padding included (PyTorch's default
``count_include_pad=True``).
"""

from __future__ import annotations

from typing import NamedTuple

from ..runtime import namespace
from .unfold import Geometry, _window_slice, check_nchw, crop, geometry, pad

__all__ = ["max_pool2d_forward", "max_pool2d_backward", "avg_pool2d_forward",
           "avg_pool2d_backward", "PoolCache"]


class PoolCache(NamedTuple):
    """What the pooling backward passes need: the window offset of each maximum (max only),
    the geometry and the input shape."""

    argmax: object
    geometry: Geometry
    input_shape: tuple


def _pool_geometry(x, kernel_size, stride, padding) -> Geometry:
    check_nchw(x)
    g = geometry(tuple(x.shape[2:]), kernel_size, kernel_size if stride is None else stride,
                 padding)
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


def _spread(parts, g: Geometry, input_shape):
    """Sum output-sized gradients, one per window offset (``parts(k)``), back onto x."""
    n, c, h, w = input_shape
    first = parts(0)
    xp = namespace(first)
    buf = xp.zeros((n, c, h + g.top + g.bottom, w + g.left + g.right), dtype=first.dtype,
                   device=first.device)
    for k, (i, j) in enumerate(_offsets(g)):
        buf[_window_slice(g, i, j)] += first if k == 0 else parts(k)
    return crop(buf, g)


def max_pool2d_forward(x, kernel_size, stride=None, padding=0):
    """Max over each window. Returns ``(y, cache)``, y of shape (N, C, OH, OW)."""
    xp = namespace(x)
    g = _pool_geometry(x, kernel_size, stride, padding)
    xpad = pad(x, g, -float("inf"))
    best = None
    for k, (i, j) in enumerate(_offsets(g)):
        s = xpad[_window_slice(g, i, j)]
        if best is None:
            best = s
            argmax = xp.zeros(tuple(s.shape), dtype=xp.int16, device=x.device)
            continue
        better = s > best                        # strict: ties keep the first maximum
        argmax = xp.where(better, xp.asarray(k, dtype=xp.int16, device=x.device), argmax)
        best = xp.maximum(best, s)
    return best, PoolCache(argmax, g, tuple(x.shape))


def max_pool2d_backward(dy, cache: PoolCache):
    """Route ``dy`` (N, C, OH, OW) to the first maximum of each window. Returns dx."""
    xp = namespace(dy)
    argmax, g, input_shape = cache
    zero = xp.zeros((), dtype=dy.dtype, device=dy.device)
    return _spread(lambda k: xp.where(argmax == k, dy, zero), g, input_shape)


def avg_pool2d_forward(x, kernel_size, stride=None, padding=0):
    """Mean over each window (zero padding counted). Returns ``(y, cache)``."""
    g = _pool_geometry(x, kernel_size, stride, padding)
    xpad = pad(x, g)
    total = None
    for i, j in _offsets(g):
        s = xpad[_window_slice(g, i, j)]
        total = s * 1 if total is None else total + s     # s * 1: never alias the input
    return total * (1.0 / g.window), PoolCache(None, g, tuple(x.shape))


def avg_pool2d_backward(dy, cache: PoolCache):
    """Spread ``dy / (kh*kw)`` evenly over each window. Returns dx (N, C, H, W)."""
    _, g, input_shape = cache
    share = dy * (1.0 / g.window)
    return _spread(lambda k: share, g, input_shape)
