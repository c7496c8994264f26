"""Max, min and average pooling, forward and backward, over the windows of im2col.

Shapes: x (N, C, H, W) -> y (N, C, OH, OW), each channel pooled on its own. ``stride`` defaults
to the kernel size (non-overlapping windows), as in PyTorch.

Forward stacks the kh*kw window offsets of the padded input on one axis,
(N, C, kh*kw, OH, OW) (:func:`~.columns.windows`, what im2col is made of), and reduces it.
Backward builds the window gradients on that axis and sums them back onto the input with
:func:`~.columns.scatter_windows` (col2im's core).

Max pooling pads with -inf and sends each output's gradient to exactly one input: the *first*
maximum of its window in row-major order (``argmax``), as PyTorch does. A ``x == max`` mask
would split the gradient over ties, which are common after ReLU.

Min pooling is max pooling of ``-x``: the gradient goes to the first minimum.

Average pooling divides by the full window ``kh*kw``, padding included (PyTorch's default
``count_include_pad=True``). ``padding_mode="replicate"`` pads with the edge pixels instead of
a constant (0 for average, -inf for max).

Global average pooling is the mean over the whole image of each channel, (N, C, H, W) ->
(N, C): one ``mean`` forward, one broadcast of ``dy / (H*W)`` backward (no windows).
"""

from __future__ import annotations

from typing import NamedTuple

from ..namespace import namespace
from .shapes import Geometry, check_nchw, geometry
from .columns import scatter_windows, windows
from .padding import pad

__all__ = ["max_pool2d_forward", "max_pool2d_backward", "min_pool2d_forward",
           "min_pool2d_backward", "avg_pool2d_forward", "avg_pool2d_backward",
           "global_avg_pool2d_forward", "global_avg_pool2d_backward", "pool_geometry",
           "PoolCache"]


class PoolCache(NamedTuple):
    """What the pooling backward passes need: the window offset of each maximum (max and min
    pooling; None for average), the geometry and the input shape."""

    argmax: object
    geometry: Geometry
    input_shape: tuple


def pool_geometry(x, kernel_size, stride, padding, padding_mode="zeros") -> Geometry:
    """Check ``x`` (N, C, H, W) and resolve the pooling geometry (``stride`` None: the kernel)."""
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


def max_pool2d_forward(x, kernel_size, stride=None, padding=0, padding_mode="zeros", *,
                       inference: bool = False):
    """Max over each window. Returns ``(y, cache)``, y of shape (N, C, OH, OW); the cache is
    None with ``inference=True``."""
    xp = namespace(x)
    g = pool_geometry(x, kernel_size, stride, padding, padding_mode)
    win = windows(pad(x, g, -float("inf")), g)              # (N, C, kh*kw, OH, OW)
    y = xp.max(win, axis=2)
    if inference:
        return y, None
    return y, PoolCache(xp.argmax(win, axis=2), g, tuple(x.shape))


def max_pool2d_backward(dy, cache: PoolCache):
    """Route ``dy`` (N, C, OH, OW) to the first maximum of each window. Returns dx."""
    xp = namespace(dy)
    argmax, g, input_shape = cache
    offsets = xp.reshape(xp.arange(g.window, dtype=argmax.dtype, device=dy.device),
                         (g.window, 1, 1))
    chosen = argmax[:, :, None, ...] == offsets             # (N, C, kh*kw, OH, OW)
    return scatter_windows(xp.where(chosen, dy[:, :, None, ...], 0.0), g, input_shape)


def min_pool2d_forward(x, kernel_size, stride=None, padding=0, padding_mode="zeros", *,
                       inference: bool = False):
    """Min over each window (padding +inf, or the edges). Returns ``(y, cache)``."""
    y, cache = max_pool2d_forward(-x, kernel_size, stride, padding, padding_mode,
                                  inference=inference)
    return -y, cache


def min_pool2d_backward(dy, cache: PoolCache):
    """Route ``dy`` to the first minimum of each window (the routing of max pooling of -x)."""
    return max_pool2d_backward(dy, cache)


def avg_pool2d_forward(x, kernel_size, stride=None, padding=0, padding_mode="zeros", *,
                       inference: bool = False):
    """Mean over each window (padding counted). Returns ``(y, cache)``."""
    xp = namespace(x)
    g = pool_geometry(x, kernel_size, stride, padding, padding_mode)
    y = xp.mean(windows(pad(x, g), g), axis=2)
    return y, None if inference else PoolCache(None, g, tuple(x.shape))


def avg_pool2d_backward(dy, cache: PoolCache):
    """Spread ``dy / (kh*kw)`` evenly over each window. Returns dx (N, C, H, W)."""
    xp = namespace(dy)
    _, g, input_shape = cache
    n, c = input_shape[:2]
    share = xp.broadcast_to((dy / g.window)[:, :, None, ...], (n, c, g.window, g.oh, g.ow))
    return scatter_windows(share, g, input_shape)


def global_avg_pool2d_forward(x, *, inference: bool = False):
    """Mean of each channel over the image: ``x`` (N, C, H, W) -> y (N, C). Returns
    ``(y, cache)``; the cache is the input shape (N, C, H, W), all the backward pass needs, or
    None with ``inference=True``."""
    xp = namespace(x)
    check_nchw(x)
    if x.shape[2] * x.shape[3] == 0:
        raise ValueError(f"global average pooling needs a non-empty image, got {tuple(x.shape)}")
    return xp.mean(x, axis=(2, 3)), None if inference else tuple(x.shape)


def global_avg_pool2d_backward(dy, input_shape):
    """Spread ``dy`` (N, C) evenly over each channel's image: dx (N, C, H, W) =
    ``dy / (H*W)`` broadcast (a copy, so that the caller may write into it)."""
    xp = namespace(dy)
    n, c, h, w = input_shape
    share = xp.broadcast_to(xp.reshape(dy / (h * w), (n, c, 1, 1)), (n, c, h, w))
    return xp.asarray(share, copy=True)
