"""2-D convolution (cross-correlation, as in PyTorch) forward and backward via im2col.

Shapes::

    x       (N, C, H, W)
    weight  (F, C, kh, kw)
    bias    (F,)
    y       (N, F, OH, OW)      OH = floor((H + pad_h - kh) / s) + 1

Forward is one matrix product per batch, ``W.reshape(F, C*kh*kw) @ cols``. Backward:

    dW = sum_n  dy_n @ cols_n^T            (F, C*kh*kw)
    db = sum_{n, oh, ow} dy
    dx = col2im(W^T @ dy)                  skipped when ``need_dx`` is False (first layer)
"""

from __future__ import annotations

from typing import NamedTuple

from ..runtime import namespace
from .im2col import Geometry, _cols, _fold, check_nchw, geometry

__all__ = ["conv2d_forward", "conv2d_backward", "ConvCache"]


class ConvCache(NamedTuple):
    """What :func:`conv2d_backward` needs from the forward pass."""

    cols: object
    geometry: Geometry
    input_shape: tuple


def conv2d_forward(x, weight, bias=None, stride=1, padding=0):
    """Convolve ``x`` (N, C, H, W) with ``weight`` (F, C, kh, kw) and add ``bias`` (F,).

    ``stride`` is an int or pair; ``padding`` an int, pair, ``"same"`` or ``"valid"`` (zeros).
    Returns ``(y, cache)`` with ``y`` of shape (N, F, OH, OW).
    """
    xp = namespace(x, weight) if bias is None else namespace(x, weight, bias)
    check_nchw(x)
    if weight.ndim != 4:
        raise ValueError(f"weight must be 4-D (F, C, kh, kw), got shape {tuple(weight.shape)}")
    n, c, h, w = x.shape
    f, wc, kh, kw = weight.shape
    if wc != c:
        raise ValueError(
            f"input has {c} channel(s) but the weight expects {wc} "
            f"(weight shape {tuple(weight.shape)}, input shape {tuple(x.shape)})"
        )
    g = geometry((h, w), (kh, kw), stride, padding)
    cols = _cols(x, g)                                   # (N, C*K, L)
    y = xp.reshape(weight, (f, c * kh * kw)) @ cols     # (N, F, L)
    if bias is not None:
        y = y + bias[:, None]
    return xp.reshape(y, (n, f, g.oh, g.ow)), ConvCache(cols, g, tuple(x.shape))


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
    n, f, oh, ow = dy.shape
    cols, g, input_shape = cache
    ck = cols.shape[1]
    dy_mat = xp.reshape(dy, (n, f, oh * ow))                      # (N, F, L)
    dweight = xp.sum(dy_mat @ xp.matrix_transpose(cols), axis=0)  # (F, C*K)
    dbias = xp.sum(dy_mat, axis=(0, 2))
    dx = None
    if need_dx:
        w_mat = xp.reshape(weight, (f, ck))
        dx = _fold(xp.matrix_transpose(w_mat) @ dy_mat, g, input_shape)
    return dx, xp.reshape(dweight, weight.shape), dbias
