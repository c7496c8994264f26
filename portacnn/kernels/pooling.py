"""Max, min and average pooling, forward and backward, with no scatter.

Shapes: x (N, C, H, W) -> y (N, C, OH, OW), each channel pooled on its own. ``stride`` defaults
to the kernel size (non-overlapping windows), as in PyTorch.

Forward stacks the kh*kw window offsets of the padded input on one axis,
(N, C, kh*kw, OH, OW) (:func:`~.columns.windows`, what im2col is made of), and reduces it.
Backward takes one of two routes, chosen by the geometry alone; on a GPU each array operation
is a kernel launch, and neither route adds anything up with ``at().add``:

* **Tiles** (stride >= kernel on both axes: windows do not overlap, LeNet's 2x2/2): the padded
  input cut into (sh, sw) blocks, (N, C, OH, sh, OW, sw), is a reshape, and the first (kh, kw)
  corner of each block is a window. The gradient is built in that block layout (a ``where`` or
  a broadcast) and reshaped back. Rows and columns no window covers (the gaps of
  stride > kernel, the remainder when H is not a multiple of the stride) come from one zero
  buffer, made only when there are any.
* **Gather** (overlapping windows; right for every geometry): the adjoint of the window stack
  written as a gather. The window gradients are placed on the stride-dilated grid (one zero
  buffer, one strided write), and each input pixel sums the kh*kw shifted slices of it (one
  ``stack``, one sum), whatever the kernel's size.

The forward could reduce the tiles' reshaped view directly, one operation fewer, but NumPy and
PyTorch reduce over such short strided axes far more slowly than over the stack.

Max pooling pads with -inf and sends each output's gradient to exactly one input: the *first*
maximum of its window in row-major order (``argmax`` over the window offset k = i*kw + j), as
PyTorch does. A ``x == max`` mask would split the gradient over ties, which are common after
ReLU. Min pooling pads with +inf and sends the gradient to the first minimum (``argmin``).

Average pooling divides by the full window ``kh*kw``, padding included (PyTorch's default
``count_include_pad=True``). ``padding_mode="replicate"`` pads with the edge pixels instead of
a constant (0 for average, -inf for max, +inf for min); its backward adds the padded border's
gradient back onto the edges (:func:`~.padding.unpad`).

Global average pooling is the mean over the whole image of each channel, (N, C, H, W) ->
(N, C): one ``mean`` forward, one broadcast of ``dy / (H*W)`` backward (no windows).
"""

from __future__ import annotations

from typing import NamedTuple

import array_api_extra as xpx
from array_api_compat import device as device_of

from ..namespace import namespace
from .shapes import Geometry, check_nchw, geometry
from .columns import windows
from .padding import kept_region, pad, unpad_kept

__all__ = ["max_pool2d_forward", "max_pool2d_backward", "min_pool2d_forward",
           "min_pool2d_backward", "avg_pool2d_forward", "avg_pool2d_backward",
           "global_avg_pool2d_forward", "global_avg_pool2d_backward", "pool_geometry",
           "PoolCache", "windows_tile"]


class PoolCache(NamedTuple):
    """What the pooling backward passes need: the window offset k = i*kw + j of each window's
    first maximum (first minimum for min pooling; None for average), the geometry and the
    input shape."""

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


def windows_tile(g: Geometry) -> bool:
    """True when windows cannot overlap (stride >= kernel on both axes): the tile route."""
    return g.sh >= g.kh and g.sw >= g.kw


# --- backward: back onto the input ------------------------------------------------------------

def _from_tiles(blocks, g: Geometry, input_shape):
    """Window gradients in tile layout (N, C, OH, kh, OW, kw) back onto the (N, C, H, W)
    input: a reshape where the windows tile the wanted pixels exactly; else one zero buffer of
    whole (sh, sw) blocks takes them first (gaps and the remainder stay zero)."""
    xp = namespace(blocks)
    n, c, h, w = input_shape
    r0, rows, c0, cols = kept_region(g, h, w)
    bh = max(g.oh, -(-(r0 + rows) // g.sh))                 # blocks covering the wanted rows
    bw = max(g.ow, -(-(c0 + cols) // g.sw))
    if (bh, bw, g.sh, g.sw) != (g.oh, g.ow, g.kh, g.kw):
        buf = xp.zeros((n, c, bh, g.sh, bw, g.sw), dtype=blocks.dtype, device=device_of(blocks))
        blocks = xpx.at(buf, (slice(None), slice(None), slice(0, g.oh), slice(0, g.kh),
                              slice(0, g.ow), slice(0, g.kw))).set(blocks)
    grad = xp.reshape(blocks, (n, c, bh * g.sh, bw * g.sw))
    return unpad_kept(grad[:, :, r0 : r0 + rows, c0 : c0 + cols], g)


def _gather_windows(grads, g: Geometry, input_shape, reduce):
    """Adjoint of pad-then-:func:`~.columns.windows`, as a gather: each input pixel combines
    (``reduce``: ``xp.sum``, ``xp.mean``) the kh*kw window gradients that reach it, one per
    kernel offset (i, j).

    ``grads`` is (N, C, kh, kw, OH, OW), one gradient per window and offset, or (N, C, OH, OW),
    one per window shared by its offsets. They are placed on the stride-dilated grid of padded
    pixels, with room for the largest shift; offset (i, j) then reaches the wanted pixels
    (:func:`~.padding.kept_region`) through the slice of that grid shifted by (i, j). Returns
    (N, C, H, W).
    """
    xp = namespace(grads)
    r0, rows, c0, cols = kept_region(g, *input_shape[2:])
    oy, ox = max(0, g.kh - 1 - r0), max(0, g.kw - 1 - c0)
    buf = xp.zeros(tuple(grads.shape[:-2]) + (oy + r0 + rows, ox + c0 + cols),
                   dtype=grads.dtype, device=device_of(grads))
    buf = xpx.at(buf, (Ellipsis, slice(oy, oy + (g.oh - 1) * g.sh + 1, g.sh),
                       slice(ox, ox + (g.ow - 1) * g.sw + 1, g.sw))).set(grads)
    per_offset = grads.ndim == 6
    parts = []
    for i in range(g.kh):
        for j in range(g.kw):
            top, left = oy + r0 - i, ox + c0 - j
            parts.append(buf[(slice(None), slice(None)) + ((i, j) if per_offset else ())
                             + (slice(top, top + rows), slice(left, left + cols))])
    return unpad_kept(reduce(xp.stack(parts, axis=2), axis=2), g)


# --- the kernels ------------------------------------------------------------------------------

def _extreme_forward(x, kernel_size, stride, padding, padding_mode, inference, fill, which):
    """Max or min pooling (``which``), padding with ``fill``; the cache holds the offset of
    each window's first extreme (``xp.argmax`` / ``xp.argmin`` return the first)."""
    xp = namespace(x)
    g = pool_geometry(x, kernel_size, stride, padding, padding_mode)
    win = windows(pad(x, g, fill), g)                      # (N, C, kh*kw, OH, OW)
    y = getattr(xp, which)(win, axis=2)
    if None in x.shape:           # a traced batch: ndonnx's max/min of it has no static shape
        y = xp.reshape(y, (-1, *win.shape[1:2], g.oh, g.ow))
    if inference:
        return y, None
    return y, PoolCache(getattr(xp, "arg" + which)(win, axis=2), g, tuple(x.shape))


def max_pool2d_forward(x, kernel_size, stride=None, padding=0, padding_mode="zeros", *,
                       inference: bool = False):
    """Max over each window. Returns ``(y, cache)``, y of shape (N, C, OH, OW); the cache is
    None with ``inference=True``."""
    return _extreme_forward(x, kernel_size, stride, padding, padding_mode, inference,
                            -float("inf"), "max")


def max_pool2d_backward(dy, cache: PoolCache):
    """Route ``dy`` (N, C, OH, OW) to the first maximum of each window. Returns dx."""
    xp = namespace(dy)
    argmax, g, input_shape = cache
    offsets = xp.arange(g.window, dtype=argmax.dtype, device=device_of(dy))
    if windows_tile(g):
        chosen = argmax[:, :, :, None, :, None] == xp.reshape(offsets, (g.kh, 1, g.kw))
        return _from_tiles(xp.where(chosen, dy[:, :, :, None, :, None], 0.0), g, input_shape)
    chosen = argmax[:, :, None, None, ...] == xp.reshape(offsets, (g.kh, g.kw, 1, 1))
    return _gather_windows(xp.where(chosen, dy[:, :, None, None, ...], 0.0), g, input_shape,
                           xp.sum)


def min_pool2d_forward(x, kernel_size, stride=None, padding=0, padding_mode="zeros", *,
                       inference: bool = False):
    """Min over each window (padding +inf, or the edges). Returns ``(y, cache)``."""
    return _extreme_forward(x, kernel_size, stride, padding, padding_mode, inference,
                            float("inf"), "min")


def min_pool2d_backward(dy, cache: PoolCache):
    """Route ``dy`` to the first minimum of each window (its offset is in the cache)."""
    return max_pool2d_backward(dy, cache)


def avg_pool2d_forward(x, kernel_size, stride=None, padding=0, padding_mode="zeros", *,
                       inference: bool = False):
    """Mean over each window (padding counted). Returns ``(y, cache)``."""
    g = pool_geometry(x, kernel_size, stride, padding, padding_mode)
    y = namespace(x).mean(windows(pad(x, g), g), axis=2)
    return y, None if inference else PoolCache(None, g, tuple(x.shape))


def avg_pool2d_backward(dy, cache: PoolCache):
    """Spread ``dy / (kh*kw)`` evenly over each window. Returns dx (N, C, H, W)."""
    xp = namespace(dy)
    _, g, input_shape = cache
    n, c = input_shape[:2]
    if windows_tile(g):
        share = xp.broadcast_to(dy[:, :, :, None, :, None], (n, c, g.oh, g.kh, g.ow, g.kw))
        return _from_tiles(share / g.window, g, input_shape)
    return _gather_windows(dy, g, input_shape, xp.mean)       # the mean divides by kh*kw


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
