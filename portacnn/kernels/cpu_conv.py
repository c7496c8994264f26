"""Faster CPU convolution: the NumPy backend's ``conv2d_forward`` / ``conv2d_backward``.

Each takes the same arguments and returns the same values as the portable kernel of its name
(:mod:`.conv`), and is tested against it and the naive loops. Unlike the portable kernels it
writes into arrays it has just made (``+=``, slice assignment), which NumPy, torch and
array_api_strict allow and JAX does not. Three routes, chosen per call by :func:`choose_route`:

**Pointwise route** (:mod:`.cpu_pointwise`): a 1x1 kernel without padding needs no columns,
the input is its own; one matrix product each way in the NCHW layout.

**Folded route** (:mod:`.cpu_folded`): im2col with the batch folded into the columns, so
forward, weight gradient and input gradient are each one matrix product per chunk of images,
the chunk sized so its columns fit ``COLUMN_CHUNK`` bytes (the cache keeps columns up to
``COLUMN_BUDGET`` bytes, the input beyond). Grouped convolutions, padded 1x1 kernels, and
output rows at least ``SHORT_ROW`` wide (``INFERENCE_SHORT_ROW`` in inference).

**Batch-minor route** (narrower rows): the batch innermost and no column matrix at all.
:func:`row_blocks` stacks kw column-shifted copies of the padded input, (Hp, kw*C*OW*N); kh of
its rows are a contiguous (kh*kw*C, OW*N) view of one output row's columns, so

    forward   y_r  = W' @ block_r                       one product per output row r
    dW             = sum over r of block_r @ dy_r^T
    dx             = the adjoint: W'^T @ dy_r added onto kh rows of a block gradient, whose
                     kw column shifts are then added into the padded input gradient

with ``W'`` the weight's columns ordered (i, j, c). Each copy moves OW*N contiguous numbers
instead of OW, and the blocks are kw times the input where the columns are kh*kw times, small
enough to stay in cache. Training outputs and dx are row-major (N, F, OH, OW); the inference
output is a (N, F, OH, OW) view of (F, OH, OW, N) memory, so the activation and pooling after
it run over contiguous runs of the batch.

**Why the row width decides.** The folded and batch-minor routes do the same
multiplications; they differ in their copies. The folded route's copies (im2col, its adjoint)
move runs of OW contiguous numbers and expand the input kh*kw times; the batch-minor route's
move runs of OW*N and expand it kw times, but it pays transposes of the input and output and OH
separate products. On short rows the folded copies are dominated by the cost of each run and
batch-minor wins; on wide rows and padded 1x1 kernels (nothing to expand) the folded route's
large products win. In inference the batch-minor route also skips the output transpose, so it
keeps wider rows. docs/performance.md has the measurements behind the two widths.
"""

from __future__ import annotations

from typing import NamedTuple

from ..namespace import namespace
from .conv import conv_geometry
from .cpu_folded import (COLUMN_BUDGET, COLUMN_CHUNK, FoldedCache, folded_backward,
                         folded_forward)
from .cpu_pointwise import PointwiseCache, pointwise_backward, pointwise_forward
from .shapes import Geometry
from .padding import pad, unpad

__all__ = ["SHORT_ROW", "INFERENCE_SHORT_ROW", "RowBlockCache", "routes_that_fit",
           "choose_route", "row_blocks", "pad_batch_minor", "conv2d_forward", "conv2d_backward"]

SHORT_ROW = 20             # training: output rows narrower than this take the batch-minor route
INFERENCE_SHORT_ROW = 32   # inference: the same, its batch-minor output left untransposed


class RowBlockCache(NamedTuple):
    """What :func:`conv2d_backward` needs from a batch-minor forward pass: the row blocks
    (Hp, kw*C*OW*N) of :func:`row_blocks`, the geometry and the input shape. (The folded and
    pointwise routes keep their own caches.)"""

    blocks: object
    geometry: Geometry
    input_shape: tuple


def routes_that_fit(g: Geometry, weight_shape, groups: int) -> tuple[str, ...]:
    """The routes that can compute a convolution: ``"folded"`` every one, ``"pointwise"`` a
    1x1 kernel without padding, ``"batch_minor"`` an ungrouped one (its row blocks order their
    rows (i, j, c), so a group's rows are not one block)."""
    fit = ("folded",)
    if weight_shape[2] * weight_shape[3] == 1 and not g.padded:
        fit += ("pointwise",)
    return fit + (("batch_minor",) if groups == 1 else ())


def choose_route(g: Geometry, weight_shape, groups: int, inference: bool) -> str:
    """The route of a convolution of geometry ``g`` with a weight of ``weight_shape``, one of
    :func:`routes_that_fit` (see the module docstring for why)."""
    fit = routes_that_fit(g, weight_shape, groups)
    if "pointwise" in fit:
        return "pointwise"
    if "batch_minor" in fit and weight_shape[2] * weight_shape[3] > 1:
        if g.ow < (INFERENCE_SHORT_ROW if inference else SHORT_ROW):
            return "batch_minor"
    return "folded"


def conv2d_forward(x, weight, bias=None, stride=1, padding=0, padding_mode: str = "zeros", *,
                   groups: int = 1, inference: bool = False):
    """:func:`portacnn.kernels.conv.conv2d_forward` on the CPU: ``x`` (N, C, H, W) convolved
    with ``weight`` (F, C/groups, kh, kw) plus ``bias`` (F,). Returns ``(y, cache)``, y
    (N, F, OH, OW), on the route :func:`choose_route` picks: a :class:`RowBlockCache`, a
    :class:`~.cpu_folded.FoldedCache` or a :class:`~.cpu_pointwise.PointwiseCache`; None in
    inference (y then a view of batch-innermost memory on the batch-minor route, of
    (F, N, OH, OW) memory on the folded one when the batch is one chunk).
    """
    xp = namespace(x, weight) if bias is None else namespace(x, weight, bias)
    g = conv_geometry(x, weight, stride, padding, padding_mode, groups)
    route = choose_route(g, tuple(weight.shape), groups, inference)
    if route == "pointwise":
        return pointwise_forward(x, weight, bias, g, groups, inference)
    if route == "folded":
        return folded_forward(x, weight, bias, g, groups, inference, COLUMN_CHUNK, COLUMN_BUDGET)
    n, f = x.shape[0], weight.shape[0]
    blocks = row_blocks(x, g)                                      # (Hp, kw*C*OW*N)
    y = _by_output_rows(blocks, weight, g, n)                      # (F, OH, OW*N)
    if bias is not None:
        y += bias[:, None, None]
    y = xp.permute_dims(xp.reshape(y, (f, g.oh, g.ow, n)), (3, 0, 1, 2))
    if inference:
        return y, None
    return _contiguous(xp, y), RowBlockCache(blocks, g, tuple(x.shape))


def conv2d_backward(dy, weight, cache: RowBlockCache | FoldedCache | PointwiseCache,
                    need_dx: bool = True):
    """Gradients of :func:`conv2d_forward` on the route its cache records: ``dy``
    (N, F, OH, OW) -> ``(dx, dweight, dbias)``, dx (N, C, H, W) row-major, or None when
    ``need_dx`` is False."""
    if isinstance(cache, FoldedCache):
        return folded_backward(dy, weight, cache, need_dx)
    if isinstance(cache, PointwiseCache):
        return pointwise_backward(dy, weight, cache, need_dx)
    xp = namespace(dy, weight)
    blocks, g, input_shape = cache
    n, f = dy.shape[:2]
    dy_mat = xp.reshape(xp.permute_dims(dy, (1, 2, 3, 0)), (f, g.oh * g.ow * n))  # (F, L*N)
    dweight = _weight_grad_by_output_rows(dy_mat, blocks, tuple(weight.shape), g, n)
    dx = _input_grad_by_output_rows(dy_mat, weight, g, input_shape) if need_dx else None
    return dx, dweight, xp.sum(dy_mat, axis=1)


def _contiguous(xp, a):
    # Flattening a permuted array copies it into row-major order; reshaping back is free.
    return xp.reshape(xp.reshape(a, (-1,)), tuple(a.shape))


def pad_batch_minor(x, g: Geometry):
    """NCHW ``x`` -> padded (Hp, C, Wp, N): the batch innermost, the rows outermost, as
    :func:`row_blocks` wants them."""
    xp = namespace(x)
    if g.mode == "replicate":
        return xp.permute_dims(pad(x, g), (2, 1, 3, 0))
    n, c, h, w = x.shape
    hp, wp = g.padded_hw(h, w)
    buf = xp.zeros((hp, c, wp, n), dtype=x.dtype, device=x.device)
    buf[g.top:g.top + h, :, g.left:g.left + w, :] = xp.permute_dims(x, (2, 1, 3, 0))
    return buf


def row_blocks(x, g: Geometry):
    """NCHW ``x`` -> (Hp, kw*C*OW*N), the kw column shifts of the padded input with the batch
    innermost: row p, entry (j, c, ow, n) is ``xpad[n, c, p, ow*sw + j]``.

    The kh rows from ``r * sh`` on, reshaped to (kh*kw*C, OW*N), are the im2col columns of
    output row r, rows ordered (i, j, c).
    """
    xp = namespace(x)
    n, c = x.shape[:2]
    xpad = pad_batch_minor(x, g)                                        # (Hp, C, Wp, N)
    shifted = xp.stack([xpad[:, :, g.cols_at(j), :] for j in range(g.kw)], axis=1)
    return xp.reshape(shifted, (xpad.shape[0], g.kw * c * g.ow * n))


def _block(blocks, r: int, g: Geometry, depth: int):
    """Output row r's columns: rows r*sh .. r*sh+kh-1 of the row blocks as (kh*kw*C, OW*N)."""
    top = r * g.sh
    return namespace(blocks).reshape(blocks[top:top + g.kh, :], (depth, -1))


def _by_output_rows(blocks, weight, g: Geometry, n: int):
    """``W @ cols`` one output row at a time: row r is ``W' @ block_r`` with ``W'`` (F,
    kh*kw*C) the weight's columns ordered (i, j, c). Returns (F, OH, OW*N)."""
    xp = namespace(blocks, weight)
    f, c, kh, kw = weight.shape
    w_rows = xp.reshape(xp.permute_dims(weight, (0, 2, 3, 1)), (f, kh * kw * c))
    y = xp.empty((f, g.oh, g.ow * n), dtype=blocks.dtype, device=blocks.device)
    for r in range(g.oh):
        y[:, r, :] = w_rows @ _block(blocks, r, g, kh * kw * c)
    return y


def _weight_grad_by_output_rows(dy_mat, blocks, weight_shape, g: Geometry, n: int):
    """dW = sum over output rows r of ``block_r @ dy_r^T`` (kh*kw*C, F), with ``dy_mat``
    (F, OH*OW*N). Returns (F, C, kh, kw)."""
    xp = namespace(dy_mat, blocks)
    f, c, kh, kw = weight_shape
    dy_rows = xp.reshape(dy_mat, (f, g.oh, g.ow * n))
    acc = _block(blocks, 0, g, kh * kw * c) @ xp.matrix_transpose(dy_rows[:, 0, :])
    for r in range(1, g.oh):
        acc += _block(blocks, r, g, kh * kw * c) @ xp.matrix_transpose(dy_rows[:, r, :])
    return xp.permute_dims(xp.reshape(xp.matrix_transpose(acc), (f, kh, kw, c)), (0, 3, 1, 2))


def _input_grad_by_output_rows(dy_mat, weight, g: Geometry, input_shape):
    """dx, the adjoint of :func:`_by_output_rows` and :func:`row_blocks`: output row r's
    ``W'^T @ dy_r`` (kh*kw*C, OW*N) is added onto kh rows of a (Hp, kw*C*OW*N) block
    gradient, whose kw column shifts are then added into a padded (Hp, C, Wp, N) gradient.
    Returns dx (N, C, H, W), padding removed, row-major."""
    xp = namespace(dy_mat, weight)
    f, c, kh, kw = weight.shape
    n, _, h, w = input_shape
    hp, wp = g.padded_hw(h, w)
    rows = g.ow * n
    w_t = xp.reshape(xp.permute_dims(weight, (2, 3, 1, 0)), (kh * kw * c, f))
    dy_rows = xp.reshape(dy_mat, (f, g.oh, rows))
    dblocks = xp.zeros((hp, kw * c * rows), dtype=dy_mat.dtype, device=dy_mat.device)
    for r in range(g.oh):
        top = r * g.sh
        dblocks[top:top + kh, :] += xp.reshape(w_t @ dy_rows[:, r, :], (kh, kw * c * rows))
    dshifted = xp.reshape(dblocks, (hp, kw, c, g.ow, n))
    buf = xp.zeros((hp, c, wp, n), dtype=dy_mat.dtype, device=dy_mat.device)
    for j in range(kw):
        buf[:, :, g.cols_at(j), :] += dshifted[:, j, ...]
    dx_cm = unpad(xp.permute_dims(buf, (1, 0, 2, 3)), g, axis=1)        # (C, H, W, N)
    return _contiguous(xp, xp.permute_dims(dx_cm, (3, 0, 1, 2)))
