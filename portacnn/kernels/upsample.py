"""Nearest-neighbour upsampling: each pixel repeated over an (rh, rw) block.

Shapes: x (N, C, H, W) -> y (N, C, H*rh, W*rw). Backward sums the gradient over each block:
a reshape to (N, C, H, rh, W, rw) and one sum.
"""

from __future__ import annotations

from ..namespace import namespace
from .shapes import check_nchw, kernel_pair

__all__ = ["upsample_nearest_forward", "upsample_nearest_backward", "repeat_pixels"]


def _scale(scale):
    try:
        return kernel_pair(scale)
    except (TypeError, ValueError):
        raise ValueError(f"scale must be a positive int or pair, got {scale!r}") from None


def repeat_pixels(x, factors):
    """Nearest-neighbour upsampling of the last two axes: each pixel becomes an (rh, rw)
    block. (..., H, W) -> (..., H*rh, W*rw): one broadcast and one copy."""
    xp = namespace(x)
    rh, rw = factors
    shape = tuple(x.shape)
    lead, (h, w) = shape[:-2], shape[-2:]
    if None in lead:                   # a traced batch of unknown size: no shape to broadcast to
        return xp.reshape(xp.repeat(xp.repeat(x, rh, axis=-2), rw, axis=-1),
                          (-1, *lead[1:], h * rh, w * rw))
    blocks = xp.broadcast_to(xp.reshape(x, lead + (h, 1, w, 1)), lead + (h, rh, w, rw))
    return xp.reshape(blocks, lead + (h * rh, w * rw))


def upsample_nearest_forward(x, scale):
    """Repeat each pixel of ``x`` (N, C, H, W) ``scale`` = (rh, rw) times: (N, C, H*rh, W*rw)."""
    check_nchw(x)
    return repeat_pixels(x, _scale(scale))


def upsample_nearest_backward(dy, scale):
    """Sum ``dy`` (N, C, H*rh, W*rw) over each (rh, rw) block: (N, C, H, W)."""
    check_nchw(dy, "the upsampled gradient")
    rh, rw = _scale(scale)
    n, c, h, w = dy.shape
    if h % rh or w % rw:
        raise ValueError(f"gradient of spatial size {h}x{w} is not a multiple of the scale {rh}x{rw}")
    xp = namespace(dy)
    return xp.sum(xp.reshape(dy, (n, c, h // rh, rh, w // rw, rw)), axis=(3, 5))
