"""2-D convolution (cross-correlation, as in PyTorch) forward and backward via im2col.

Shapes::

    x       (N, C, H, W)
    weight  (F, C, kh, kw)
    bias    (F,)
    cols    (N, C*kh*kw, OH*OW)      im2col of x (see :mod:`.columns`)
    y       (N, F, OH, OW)           OH = floor((H + pad_h - kh) / s) + 1

Forward is one matrix product, broadcast over the batch::

    y = W.reshape(F, C*kh*kw) @ cols + b

Backward, with ``dY = dy.reshape(N, F, OH*OW)``::

    dW = sum over n of dY @ cols^T         (F, C*kh*kw)
    db = sum over n, oh, ow of dy          (F,)
    dx = col2im(W^T @ dY)                  skipped when ``need_dx`` is False (a first layer)

This is the portable implementation every backend can run and the one the docs teach; a
backend may run a faster one in its kernel set (:class:`portacnn.kernels.CpuKernels`).
"""

from __future__ import annotations

from typing import NamedTuple

from ..namespace import namespace
from .shapes import Geometry, check_nchw, geometry
from .columns import col2im, im2col

__all__ = ["conv2d_forward", "conv2d_backward", "conv_geometry", "ConvCache"]


class ConvCache(NamedTuple):
    """What :func:`conv2d_backward` needs from the forward pass."""

    cols: object            # (N, C*kh*kw, OH*OW)
    geometry: Geometry
    input_shape: tuple


def conv_geometry(x, weight, stride, padding, padding_mode) -> Geometry:
    """Check ``x`` (N, C, H, W) against ``weight`` (F, C, kh, kw) and resolve the geometry."""
    check_nchw(x)
    if weight.ndim != 4:
        raise ValueError(f"weight must be 4-D (F, C, kh, kw), got shape {tuple(weight.shape)}")
    if weight.shape[1] != x.shape[1]:
        raise ValueError(
            f"input has {x.shape[1]} channel(s) but the weight expects {weight.shape[1]} "
            f"(weight shape {tuple(weight.shape)}, input shape {tuple(x.shape)})"
        )
    return geometry(tuple(x.shape[2:]), tuple(weight.shape[2:]), stride, padding, padding_mode)


def conv2d_forward(x, weight, bias=None, stride=1, padding=0, padding_mode: str = "zeros", *,
                   inference: bool = False):
    """Convolve ``x`` (N, C, H, W) with ``weight`` (F, C, kh, kw) and add ``bias`` (F,).

    ``stride`` is an int or pair; ``padding`` an int, pair, ``"same"`` or ``"valid"``;
    ``padding_mode`` ``"zeros"`` or ``"replicate"`` (edge pixels repeated). With
    ``inference=True`` no backward pass follows and the cache is None.

    Returns ``(y, cache)`` with ``y`` of shape (N, F, OH, OW).
    """
    xp = namespace(x, weight) if bias is None else namespace(x, weight, bias)
    g = conv_geometry(x, weight, stride, padding, padding_mode)
    n = x.shape[0]
    f = weight.shape[0]
    cols = im2col(x, g)                                          # (N, C*kh*kw, OH*OW)
    y = xp.reshape(weight, (f, -1)) @ cols                       # (N, F, OH*OW)
    if bias is not None:
        y = y + bias[:, None]
    y = xp.reshape(y, (n, f, g.oh, g.ow))
    return y, None if inference else ConvCache(cols, g, tuple(x.shape))


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
    cols, g, input_shape = cache
    n, f = dy.shape[:2]
    dy_mat = xp.reshape(dy, (n, f, g.oh * g.ow))                          # (N, F, L)
    dweight = xp.sum(dy_mat @ xp.matrix_transpose(cols), axis=0)          # (F, C*kh*kw)
    dbias = xp.sum(dy_mat, axis=(0, 2))
    dx = None
    if need_dx:
        w_mat = xp.reshape(weight, (f, -1))
        dx = col2im(xp.matrix_transpose(w_mat) @ dy_mat, g, input_shape)  # (N, C, H, W)
    return dx, xp.reshape(dweight, tuple(weight.shape)), dbias
