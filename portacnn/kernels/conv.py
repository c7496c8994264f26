"""2-D convolution (cross-correlation, as in PyTorch) forward and backward via im2col.

Shapes, with ``G = groups`` (1 by default; ``G == C`` is a depthwise convolution)::

    x       (N, C, H, W)
    weight  (F, C/G, kh, kw)          filter f sees the input channels of its group f // (F/G)
    bias    (F,)
    cols    (N, C*kh*kw, OH*OW)       im2col of x (see :mod:`.columns`)
    y       (N, F, OH, OW)            OH = floor((H + pad_h - kh) / s) + 1

The rows of ``cols`` are ordered (c, i, j), so the G groups are G consecutive row blocks:
``cols`` is viewed as (N, G, C/G*kh*kw, L) and the weight as (G, F/G, C/G*kh*kw), and forward
is one matrix product, broadcast over the batch and the groups (no loop over groups)::

    y = W.reshape(G, F/G, C/G*kh*kw) @ cols.reshape(N, G, C/G*kh*kw, L) + b

Backward, with ``dY = dy.reshape(N, G, F/G, OH*OW)``::

    dW = sum over n of dY @ cols^T         (G, F/G, C/G*kh*kw)
    db = sum over n, oh, ow of dy          (F,)
    dx = col2im(W^T @ dY)                  skipped when ``need_dx`` is False (a first layer)

This is the portable implementation every backend can run and the one the docs teach; a
backend may run a faster one in its kernel set (:class:`portacnn.kernels.CpuKernels`).
"""

from __future__ import annotations

from typing import NamedTuple

from ..namespace import namespace
from ..scalars import is_int
from .shapes import Geometry, check_nchw, geometry
from .columns import col2im, im2col

__all__ = ["conv2d_forward", "conv2d_backward", "conv_geometry", "check_groups", "ConvCache"]


class ConvCache(NamedTuple):
    """What :func:`conv2d_backward` needs from the forward pass."""

    cols: object            # (N, C*kh*kw, OH*OW)
    geometry: Geometry
    input_shape: tuple
    groups: int = 1


def check_groups(groups, in_channels, out_channels) -> int:
    """``groups`` as an int, checked to divide both channel counts (C and F)."""
    if not is_int(groups) or groups <= 0:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    groups = int(groups)
    for name, count in (("input", in_channels), ("output", out_channels)):
        if count is not None and count % groups:
            raise ValueError(
                f"groups={groups} does not divide the {count} {name} channel(s): each group "
                f"takes C/groups input channels to F/groups filters, so choose groups dividing "
                f"both channel counts (groups=C is a depthwise convolution)"
            )
    return groups


def conv_geometry(x, weight, stride, padding, padding_mode, groups=1) -> Geometry:
    """Check ``x`` (N, C, H, W) against ``weight`` (F, C/groups, kh, kw) and resolve the
    geometry."""
    check_nchw(x)
    if weight.ndim != 4:
        raise ValueError(f"weight must be 4-D (F, C, kh, kw), got shape {tuple(weight.shape)}")
    check_groups(groups, x.shape[1], weight.shape[0])
    if weight.shape[1] * groups != x.shape[1]:
        per_group = ("" if groups == 1 else
                     f" per group, {weight.shape[1] * groups} in all with groups={groups}")
        raise ValueError(
            f"input has {x.shape[1]} channel(s) but the weight expects {weight.shape[1]}"
            f"{per_group} (weight shape {tuple(weight.shape)}, input shape {tuple(x.shape)})"
        )
    return geometry(tuple(x.shape[2:]), tuple(weight.shape[2:]), stride, padding, padding_mode)


def conv2d_forward(x, weight, bias=None, stride=1, padding=0, padding_mode: str = "zeros", *,
                   groups: int = 1, inference: bool = False):
    """Convolve ``x`` (N, C, H, W) with ``weight`` (F, C/groups, kh, kw) and add ``bias`` (F,).

    ``stride`` is an int or pair; ``padding`` an int, pair, ``"same"`` or ``"valid"``;
    ``padding_mode`` ``"zeros"`` or ``"replicate"`` (edge pixels repeated). ``groups`` splits
    the channels into that many independent convolutions (C and F must be multiples of it;
    ``groups=C`` is depthwise). With ``inference=True`` no backward pass follows and the cache
    is None.

    Returns ``(y, cache)`` with ``y`` of shape (N, F, OH, OW).
    """
    xp = namespace(x, weight) if bias is None else namespace(x, weight, bias)
    g = conv_geometry(x, weight, stride, padding, padding_mode, groups)
    n = x.shape[0]
    f = weight.shape[0]
    cols = im2col(x, g)                                          # (N, C*kh*kw, OH*OW)
    y = _grouped(weight, groups) @ _grouped_rows(cols, groups)   # (N, G, F/G, OH*OW)
    y = xp.reshape(y, (n, f, g.oh * g.ow))
    if bias is not None:
        y = y + bias[:, None]
    y = xp.reshape(y, (n, f, g.oh, g.ow))
    return y, None if inference else ConvCache(cols, g, tuple(x.shape), groups)


def conv2d_backward(dy, weight, cache: ConvCache, need_dx: bool = True):
    """Gradients of :func:`conv2d_forward`.

    Args:
        dy: (N, F, OH, OW) gradient of the loss with respect to the output.
        weight: (F, C, kh, kw), the weight used in the forward pass.
        cache: the :class:`ConvCache` returned by the forward pass.
        need_dx: compute dx; a network's first layer passes False and saves a col2im.

    Returns:
        ``(dx, dweight, dbias)``; ``dx`` is None when ``need_dx`` is False.
    """
    xp = namespace(dy, weight)
    cols, g, input_shape, groups = cache
    n, f = dy.shape[:2]
    dy_mat = xp.reshape(dy, (n, groups, f // groups, g.oh * g.ow))       # (N, G, F/G, L)
    dweight = xp.sum(dy_mat @ xp.matrix_transpose(_grouped_rows(cols, groups)),
                     axis=0)                                              # (G, F/G, C/G*kh*kw)
    dbias = xp.sum(xp.reshape(dy_mat, (n, f, g.oh * g.ow)), axis=(0, 2))
    dx = None
    if need_dx:
        dcols = xp.matrix_transpose(_grouped(weight, groups)) @ dy_mat    # (N, G, C/G*kh*kw, L)
        dx = col2im(xp.reshape(dcols, tuple(cols.shape)), g, input_shape)  # (N, C, H, W)
    return dx, xp.reshape(dweight, tuple(weight.shape)), dbias


def _grouped(weight, groups: int):
    """(F, C/G, kh, kw) -> (G, F/G, C/G*kh*kw): each group's filters as one matrix."""
    f = weight.shape[0]
    return namespace(weight).reshape(weight, (groups, f // groups, -1))


def _grouped_rows(cols, groups: int):
    """(N, C*kh*kw, L) -> (N, G, C/G*kh*kw, L): the rows ordered (c, i, j) split by group."""
    n, rows, length = cols.shape
    return namespace(cols).reshape(cols, (n, groups, rows // groups, length))
