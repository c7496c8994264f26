"""Max and average pooling, forward and backward, over the same windows as im2col.

Shapes: x (N, C, H, W) -> y (N, C, OH, OW), each channel pooled on its own. ``stride`` defaults
to the kernel size (non-overlapping windows), as in PyTorch.

Max pooling pads with -inf and sends each output's gradient to exactly one input: the *first*
maximum of its window in row-major order, as PyTorch does. (A ``x == max`` mask would split
the gradient over ties, which are common after ReLU.)

Average pooling divides by the full window ``kh*kw``, padding included (PyTorch's default
``count_include_pad=True``).
"""

from __future__ import annotations

from typing import NamedTuple

from ..runtime import namespace
from .im2col import Geometry, check_nchw, geometry, pad, scatter_windows, windows

__all__ = ["max_pool2d_forward", "max_pool2d_backward", "avg_pool2d_forward",
           "avg_pool2d_backward", "PoolCache"]


class PoolCache(NamedTuple):
    """What the pooling backward passes need: window argmax (max only), geometry, x shape."""

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


def max_pool2d_forward(x, kernel_size, stride=None, padding=0):
    """Max over each window. Returns ``(y, cache)``, y of shape (N, C, OH, OW)."""
    xp = namespace(x)
    g = _pool_geometry(x, kernel_size, stride, padding)
    win = windows(pad(x, g, -float("inf")), g)       # (N, C, K, OH, OW)
    return xp.max(win, axis=2), PoolCache(xp.argmax(win, axis=2), g, tuple(x.shape))


def max_pool2d_backward(dy, cache: PoolCache):
    """Route ``dy`` (N, C, OH, OW) to the first maximum of each window. Returns dx."""
    xp = namespace(dy)
    argmax, g, input_shape = cache
    offsets = xp.reshape(xp.arange(g.window, device=dy.device), (g.window, 1, 1))
    onehot = argmax[:, :, None, ...] == offsets      # (N, C, K, OH, OW)
    dwin = xp.where(onehot, dy[:, :, None, ...], xp.zeros((), dtype=dy.dtype, device=dy.device))
    return scatter_windows(dwin, g, input_shape)


def avg_pool2d_forward(x, kernel_size, stride=None, padding=0):
    """Mean over each window (zero padding counted). Returns ``(y, cache)``."""
    xp = namespace(x)
    g = _pool_geometry(x, kernel_size, stride, padding)
    win = windows(pad(x, g), g)
    return xp.mean(win, axis=2), PoolCache(None, g, tuple(x.shape))


def avg_pool2d_backward(dy, cache: PoolCache):
    """Spread ``dy / (kh*kw)`` evenly over each window. Returns dx (N, C, H, W)."""
    xp = namespace(dy)
    _, g, input_shape = cache
    n, c, oh, ow = dy.shape
    share = dy[:, :, None, ...] / g.window
    return scatter_windows(xp.broadcast_to(share, (n, c, g.window, oh, ow)), g, input_shape)
