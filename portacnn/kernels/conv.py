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
    dx = a convolution of dy (below)       skipped when ``need_dx`` is False (a first layer)

The input gradient is itself a convolution, not a scatter: padded input pixel p receives
``sum over i of W[i] * dy[(p - i) / s]`` (where s divides p - i), which is the full
correlation of dy, dilated by the stride (s - 1 zeros between its pixels) and framed by kh - 1
zeros, with the kernel flipped in both spatial axes and its channel axes swapped per group,
(F, C/G, kh, kw) -> (G, C/G, F/G*kh*kw). So dx is a zero frame and one strided write of dy
into it, one im2col of the frame and one matrix product, whatever the kernel's size. Only
the pixels whose gradient is kept are computed (:func:`~.padding.kept_region`: the input's own
for zero padding, the whole padded input for replicate, whose border is then folded onto the
edges); padding wider than kh - 1 cuts dy's outer rows off instead of framing them.

This is the portable implementation every backend can run and the one the docs teach; a
backend may run a faster one in its kernel set (:class:`portacnn.kernels.CpuKernels`).
"""

from __future__ import annotations

from typing import NamedTuple

from ..namespace import namespace
from ..scalars import is_int
import array_api_extra as xpx
from array_api_compat import device as device_of

from .shapes import Geometry, batch_dim, check_nchw, geometry
from .columns import im2col
from .padding import kept_region, unpad_kept

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
    n = batch_dim(x)
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
        need_dx: compute dx; a network's first layer passes False and saves its convolution.

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
    dx = _input_gradient(dy, weight, g, input_shape, groups) if need_dx else None
    return dx, xp.reshape(dweight, tuple(weight.shape)), dbias


def _grouped(weight, groups: int):
    """(F, C/G, kh, kw) -> (G, F/G, C/G*kh*kw): each group's filters as one matrix."""
    f = weight.shape[0]
    return namespace(weight).reshape(weight, (groups, f // groups, -1))


def _grouped_rows(cols, groups: int):
    """(N, C*kh*kw, L) -> (N, G, C/G*kh*kw, L): the rows ordered (c, i, j) split by group."""
    _, rows, length = cols.shape
    return namespace(cols).reshape(cols, (batch_dim(cols), groups, rows // groups, length))


def _input_gradient(dy, weight, g: Geometry, input_shape, groups: int):
    """dx (N, C, H, W) as the full correlation of the framed dy with the flipped, transposed
    weight: one im2col and one matrix product (see the module docstring)."""
    xp = namespace(dy, weight)
    n, c, h, w = input_shape
    f = weight.shape[0]
    r0, rows, c0, cols = kept_region(g, h, w)
    frame = _framed(dy, g, r0, rows, c0, cols)            # (N, F, rows + kh - 1, cols + kw - 1)
    full = geometry(tuple(frame.shape[2:]), (g.kh, g.kw))  # stride 1, unpadded: (rows, cols)
    flipped = xp.flip(xp.permute_dims(
        xp.reshape(weight, (groups, f // groups, c // groups, g.kh, g.kw)), (0, 2, 1, 3, 4)),
        axis=(3, 4))
    wt = xp.reshape(flipped, (groups, c // groups, -1))   # (G, C/G, F/G*kh*kw), rows (f, i, j)
    grad = wt @ _grouped_rows(im2col(frame, full), groups)  # (N, G, C/G, rows*cols)
    return unpad_kept(xp.reshape(grad, (n, c, rows, cols)), g)


def _framed(dy, g: Geometry, r0: int, rows: int, c0: int, cols: int):
    """dy (N, F, OH, OW) dilated by the stride and placed in a zero frame of
    (rows + kh - 1, cols + kw - 1), so that the frame's window at (u, v) is what the kept padded
    pixel (r0 + u, c0 + v) receives from, in flipped kernel order. dy's row o lands on frame row
    ``kh - 1 - r0 + o*sh``; rows that land outside (wide padding: windows that saw only
    padding) are cut off. Two operations, a zero buffer and one strided write, or none where
    the frame is dy itself (a 1x1 kernel at stride 1)."""
    xp = namespace(dy)
    n, f = dy.shape[:2]
    h_frame, w_frame = rows + g.kh - 1, cols + g.kw - 1
    lo_r, hi_r, at_r = _placement(g.kh - 1 - r0, g.sh, g.oh, h_frame)
    lo_c, hi_c, at_c = _placement(g.kw - 1 - c0, g.sw, g.ow, w_frame)
    if (g.sh, g.sw, at_r, at_c, hi_r - lo_r, hi_c - lo_c) == (1, 1, 0, 0, h_frame, w_frame):
        return dy[:, :, lo_r:hi_r, lo_c:hi_c]
    frame = xp.zeros((n, f, h_frame, w_frame), dtype=dy.dtype, device=device_of(dy))
    if hi_r <= lo_r or hi_c <= lo_c:                       # no window reaches a kept pixel
        return frame
    key = (slice(None), slice(None), slice(at_r, at_r + (hi_r - lo_r - 1) * g.sh + 1, g.sh),
           slice(at_c, at_c + (hi_c - lo_c - 1) * g.sw + 1, g.sw))
    return xpx.at(frame, key).set(dy[:, :, lo_r:hi_r, lo_c:hi_c])


def _placement(offset: int, stride: int, out: int, size: int):
    """Along one axis: the dy indices ``[lo, hi)`` whose frame index ``offset + o*stride`` lies
    in ``[0, size)``, and the frame index of ``lo``."""
    lo = max(0, -(offset // stride))                       # ceil(-offset / stride), at least 0
    hi = min(out, (size - 1 - offset) // stride + 1) if size - 1 >= offset else 0
    return lo, hi, offset + lo * stride
