"""1x1 convolution without columns: the NumPy backend's route for 1x1 kernels without padding
(:func:`.cpu_conv.choose_route` chooses).

A 1x1 kernel's window is one pixel, so the input itself, (N, C, H*W), is its im2col columns
(after taking every stride-th pixel). Forward, weight gradient and input gradient are each one
matrix product broadcast over the batch and the groups, in the NCHW layout the layers use, with
no copy but the strided subsampling (G groups, L = OH*OW)::

    xs   (N, G, C/G, L)     x[:, :, ::sh, ::sw]
    y    (N, G, F/G, L)   = W (G, F/G, C/G) @ xs
    dW   (G, F/G, C/G)    = sum over n of dY @ xs^T
    dx   x[:, :, ::sh, ::sw] = W^T @ dY, zero elsewhere
"""

from __future__ import annotations

from typing import NamedTuple

from ..namespace import namespace
from .shapes import Geometry

__all__ = ["PointwiseCache", "pointwise_forward", "pointwise_backward"]


class PointwiseCache(NamedTuple):
    """What :func:`pointwise_backward` needs: the subsampled input (N, G, C/G, OH*OW), the
    geometry, the input shape and the groups."""

    rows: object
    geometry: Geometry
    input_shape: tuple
    groups: int


def _pixels(g: Geometry):
    """The pixels a 1x1 kernel meets, ``[:, :, ::sh, ::sw]`` cut to the output size."""
    return (slice(None), slice(None), g.rows_at(0), g.cols_at(0))


def pointwise_forward(x, weight, bias, g: Geometry, groups: int, inference: bool):
    """y (N, F, OH, OW), row-major, and its :class:`PointwiseCache` (None for inference)."""
    xp = namespace(x, weight)
    n, c = x.shape[:2]
    f = weight.shape[0]
    rows = xp.reshape(x[_pixels(g)], (n, groups, c // groups, g.oh * g.ow))
    y = xp.reshape(xp.reshape(weight, (groups, f // groups, c // groups)) @ rows,
                   (n, f, g.oh * g.ow))
    if bias is not None:
        y += bias[:, None]
    y = xp.reshape(y, (n, f, g.oh, g.ow))
    return y, None if inference else PointwiseCache(rows, g, tuple(x.shape), groups)


def pointwise_backward(dy, weight, cache: PointwiseCache, need_dx: bool):
    """``(dx, dweight, dbias)``: dx (N, C, H, W) row-major, or None when ``need_dx`` is
    False."""
    xp = namespace(dy, weight)
    rows, g, input_shape, groups = cache
    n, f = dy.shape[:2]
    dy_m = xp.reshape(dy, (n, groups, f // groups, g.oh * g.ow))           # (N, G, F/G, L)
    dweight = xp.sum(dy_m @ xp.matrix_transpose(rows), axis=0)              # (G, F/G, C/G)
    dbias = xp.sum(xp.reshape(dy, (n, f, g.oh * g.ow)), axis=(0, 2))
    dx = None
    if need_dx:
        w_t = xp.matrix_transpose(xp.reshape(weight, (groups, f // groups, -1)))
        d_rows = xp.reshape(w_t @ dy_m, (n, input_shape[1], g.oh, g.ow))
        if (g.oh, g.ow) == tuple(input_shape[2:]):
            dx = d_rows
        else:
            dx = xp.zeros(input_shape, dtype=dy.dtype, device=dy.device)
            dx[_pixels(g)] = d_rows
    return dx, xp.reshape(dweight, tuple(weight.shape)), dbias

