"""Convolution on batch-folded columns: the NumPy backend's route for wide rows, padded 1x1
kernels and grouped convolutions (:func:`.cpu_conv.choose_route` chooses).

The batch is folded into the columns, so forward, weight gradient and input gradient are each
ONE matrix product over a whole chunk of images (the weight gradient over the whole batch when
its columns are kept), rather than one small product per image or per output row. With L = OH*OW, G groups and ``K = C/G*kh*kw``::

    xpad   (C, N, Hp, Wp)      the padded input, channels outermost
    cols   (G, K, N*L)         rows (c, i, j), columns (n, oh, ow)
    y^T    (G, F/G, N*L)  = W (G, F/G, K) @ cols
    dW     (G, F/G, K)    = dY^T (G, F/G, N*L) @ cols^T
    dcols  (G, K, N*L)    = W^T @ dY^T,  dx = the adjoint of the columns applied to dcols

The columns are built in two passes: the kw column shifts of the padded input,
(C, kw, N, Hp, OW), then the kh row shifts of that stack, whose copies move whole (OH, OW)
planes. Their adjoint adds the kh row shifts back into a (C, kw, N, Hp, OW) buffer and then
the kw column shifts into the padded gradient: kh + kw strided ``+=`` in all.

Chunks and memory: each product works on a chunk of as many images as fit ``COLUMN_CHUNK``
bytes of columns (at least one), so the columns are read back from cache right after they are
written; the backward pass runs chunk by chunk too. The cache keeps every chunk's columns while
the whole batch's fit ``COLUMN_BUDGET``; beyond that it keeps the input instead, and the
backward pass builds each chunk's columns again, so memory does not grow with the batch.
"""

from __future__ import annotations

from typing import NamedTuple

from ..namespace import namespace
from .padding import pad, unpad
from .shapes import Geometry

__all__ = ["FoldedCache", "COLUMN_CHUNK", "COLUMN_BUDGET", "folded_columns", "folded_forward",
           "folded_backward"]

COLUMN_CHUNK = 2 * 2**20     # bytes of columns one product works on, so that they stay in cache
COLUMN_BUDGET = 32 * 2**20   # most bytes of columns a cache keeps; a larger batch keeps its input


class FoldedCache(NamedTuple):
    """What :func:`folded_backward` needs: the batch's columns (C, kh, kw, N, OH, OW), or, for
    a batch whose columns exceed the budget, None and the input (N, C, H, W) to build them
    again; the geometry, input shape, groups and images per chunk."""

    cols: object
    x: object
    geometry: Geometry
    input_shape: tuple
    groups: int
    chunk: int


def _channels_outer(x, g: Geometry):
    """NCHW ``x`` -> the padded input with channels outermost, (C, N, Hp, Wp) (a view when
    there is no padding)."""
    xp = namespace(x)
    if not g.padded:
        return xp.permute_dims(x, (1, 0, 2, 3))
    if g.mode == "replicate":
        return xp.permute_dims(pad(x, g), (1, 0, 2, 3))
    n, c, h, w = x.shape
    hp, wp = g.padded_hw(h, w)
    buf = xp.zeros((c, n, hp, wp), dtype=x.dtype, device=x.device)
    buf[:, :, g.top:g.top + h, g.left:g.left + w] = xp.permute_dims(x, (1, 0, 2, 3))
    return buf


def folded_columns(x, g: Geometry, out=None):
    """im2col with the batch folded into the columns: (N, C, H, W) -> (C, kh, kw, N, OH, OW),
    which reshapes to (C*kh*kw, N*OH*OW): row c*kh*kw + i*kw + j, column n*OH*OW + oh*OW + ow
    holding ``xpad[n, c, oh*sh + i, ow*sw + j]``. Written into ``out`` when given (a slice of
    a larger batch's columns), else into a new array."""
    xp = namespace(x)
    n, c = x.shape[:2]
    xpad = _channels_outer(x, g)                                      # (C, N, Hp, Wp)
    hp = xpad.shape[2]
    if g.kw == 1:
        shifted = xp.reshape(xpad[:, :, :, g.cols_at(0)], (c, 1, n, hp, g.ow))
    else:
        shifted = xp.empty((c, g.kw, n, hp, g.ow), dtype=x.dtype, device=x.device)
        for j in range(g.kw):
            shifted[:, j, ...] = xpad[:, :, :, g.cols_at(j)]
    cols = xp.empty((c, g.kh, g.kw, n, g.oh, g.ow), dtype=x.dtype,
                    device=x.device) if out is None else out
    for i in range(g.kh):
        cols[:, i, ...] = shifted[:, :, :, g.rows_at(i), :]
    return cols


def _fold_back(dcols, g: Geometry, input_shape):
    """The adjoint of :func:`folded_columns`: (C*kh*kw, N*OH*OW) -> dx (N, C, H, W),
    row-major, overlapping windows summed."""
    xp = namespace(dcols)
    n, c, h, w = input_shape
    hp, wp = g.padded_hw(h, w)
    dcols = xp.reshape(dcols, (c, g.kh, g.kw, n, g.oh, g.ow))
    dshifted = xp.zeros((c, g.kw, n, hp, g.ow), dtype=dcols.dtype, device=dcols.device)
    for i in range(g.kh):
        dshifted[:, :, :, g.rows_at(i), :] += dcols[:, i, ...]
    buf = xp.zeros((n, c, hp, wp), dtype=dcols.dtype, device=dcols.device)
    view = xp.permute_dims(buf, (1, 0, 2, 3))                          # (C, N, Hp, Wp)
    for j in range(g.kw):
        view[:, :, :, g.cols_at(j)] += dshifted[:, j, ...]
    dx = unpad(buf, g)
    return dx if dx is buf else _contiguous(xp, dx)


def _contiguous(xp, a):
    # Flattening a strided view copies it into row-major order; reshaping back is free.
    return xp.reshape(xp.reshape(a, (-1,)), tuple(a.shape))


def _grouped(a, groups: int):
    """(rows, M) -> (G, rows/G, M): the rows of each group as one matrix (a view)."""
    return namespace(a).reshape(a, (groups, a.shape[0] // groups, a.shape[1]))


def _matrix(cols):
    """(C, kh, kw, n, OH, OW) columns as the (C*kh*kw, n*OH*OW) matrix (a view, also of a
    slice of a larger batch's columns)."""
    c, kh, kw, n, oh, ow = cols.shape
    return namespace(cols).reshape(cols, (c * kh * kw, n * oh * ow))


def _product(weight, cols, groups: int):
    """W (F, C/G, kh, kw) @ cols (C*kh*kw, M), group by group in one call: (F, M)."""
    xp = namespace(weight, cols)
    f = weight.shape[0]
    return xp.reshape(xp.reshape(weight, (groups, f // groups, -1)) @ _grouped(cols, groups),
                      (f, cols.shape[1]))


def _weight_product(dy_t, cols, groups: int):
    """dY^T (F, M) @ cols^T (M, C*kh*kw), group by group: (G, F/G, C/G*kh*kw)."""
    return _grouped(dy_t, groups) @ namespace(cols).matrix_transpose(_grouped(cols, groups))


def _transposed_product(weight, dy_t, groups: int):
    """W^T @ dY^T, group by group: (G, C/G*kh*kw, F/G) @ (G, F/G, M) -> (C*kh*kw, M). With one
    filter per group (a depthwise convolution) that is an outer product per group, computed
    as a broadcast multiplication: NumPy's matmul runs products with an inner dimension of 1
    without BLAS, several times slower."""
    xp = namespace(weight, dy_t)
    f = weight.shape[0]
    w_t = xp.matrix_transpose(xp.reshape(weight, (groups, f // groups, -1)))
    dy_g = _grouped(dy_t, groups)
    dcols = w_t * dy_g if f == groups else w_t @ dy_g
    return xp.reshape(dcols, (-1, dy_t.shape[1]))


def folded_forward(x, weight, bias, g: Geometry, groups: int, inference: bool,
                   chunk_bytes: int = COLUMN_CHUNK, budget: int = COLUMN_BUDGET):
    """y (N, F, OH, OW) and its :class:`FoldedCache` (None for inference), computed in chunks
    of images whose columns fit ``chunk_bytes``; the cache keeps the columns when the whole
    batch's fit ``budget``, else the input. Training outputs are row-major; an inference
    output computed in one chunk is a view of (F, N, OH, OW) memory."""
    xp = namespace(x, weight)
    n, c = x.shape[:2]
    f, length = weight.shape[0], g.oh * g.ow
    per_image = _column_bytes(x, g)
    chunk = max(1, min(n, chunk_bytes // per_image))
    keep = not inference and n * per_image <= budget
    if chunk == n:
        kept = folded_columns(x, g)                                     # (C, kh, kw, N, OH, OW)
        y_t = _with_bias(_product(weight, _matrix(kept), groups), bias)  # (F, N*L)
        y = xp.permute_dims(xp.reshape(y_t, (f, n, g.oh, g.ow)), (1, 0, 2, 3))
        if not inference:
            y = _contiguous(xp, y)
    else:
        kept = xp.empty((c, g.kh, g.kw, n, g.oh, g.ow), dtype=x.dtype,
                        device=x.device) if keep else None
        y = xp.empty((n, f, length), dtype=x.dtype, device=x.device)
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            cols = folded_columns(x[start:stop, ...], g,
                                  None if kept is None else kept[:, :, :, start:stop, ...])
            y_t = _with_bias(_product(weight, _matrix(cols), groups), bias)
            y[start:stop, ...] = xp.permute_dims(xp.reshape(y_t, (f, stop - start, length)),
                                                 (1, 0, 2))
        y = xp.reshape(y, (n, f, g.oh, g.ow))
    if inference:
        return y, None
    return y, FoldedCache(kept if keep else None, None if keep else x, g, tuple(x.shape), groups,
                          chunk)


def _column_bytes(x, g: Geometry) -> int:
    """Bytes of one image's columns: C*kh*kw*OH*OW numbers."""
    itemsize = 8 if x.dtype == namespace(x).float64 else 4
    return x.shape[1] * g.window * g.oh * g.ow * itemsize


def _with_bias(y_t, bias):
    if bias is not None:
        y_t += bias[:, None]
    return y_t


def folded_backward(dy, weight, cache: FoldedCache, need_dx: bool):
    """``(dx, dweight, dbias)`` from the cache of :func:`folded_forward`: dx (N, C, H, W)
    row-major, or None when ``need_dx`` is False.

    With the columns kept, the weight gradient is one product over the whole batch; the input
    gradient, and the weight gradient of columns built again, go chunk by chunk."""
    xp = namespace(dy, weight)
    kept, x, g, input_shape, groups, chunk = cache
    n, f = dy.shape[:2]
    length = g.oh * g.ow
    dy_t = xp.reshape(_contiguous(xp, xp.permute_dims(dy, (1, 0, 2, 3))), (f, n * length))
    dbias = xp.sum(dy_t, axis=1)
    dweight = None if kept is None else _weight_product(dy_t, _matrix(kept), groups)
    dx = xp.empty(input_shape, dtype=dy.dtype, device=dy.device) if need_dx and n > chunk else None
    if kept is None or need_dx:
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            dy_part = dy_t[:, start * length:stop * length]             # (F, n*L)
            if kept is None:
                dw = _weight_product(dy_part, _matrix(folded_columns(x[start:stop, ...], g)),
                                     groups)
                if dweight is None:
                    dweight = dw
                else:
                    dweight += dw
            if need_dx:
                part = _fold_back(_transposed_product(weight, dy_part, groups), g,
                                  (stop - start,) + tuple(input_shape[1:]))
                if n <= chunk:
                    dx = part
                else:
                    dx[start:stop, ...] = part
    return dx, xp.reshape(dweight, tuple(weight.shape)), dbias
