"""2-D convolution (cross-correlation, as in PyTorch) forward and backward via im2col.

Shapes::

    x       (N, C, H, W)
    weight  (F, C, kh, kw)
    bias    (F,)
    y       (N, F, OH, OW)      OH = floor((H + pad_h - kh) / s) + 1

Forward is a matrix product ``W.reshape(F, C*kh*kw) @ cols``. Backward:

    dW = dy @ cols^T                       (F, C*kh*kw), summed over the batch
    db = sum over n, oh, ow of dy
    dx = col2im(W^T @ dy)                  skipped when ``need_dx`` is False (first layer)

Two layouts, both checked against the same naive loops in the tests:

- ``"batched"``: cols (N, C*K, OH*OW), one small matrix product per sample. Best for training
  when output rows are long (LeNet's first layer, 28 wide): each window slice copies rows of
  OW numbers.
- ``"batch_minor"``: the batch innermost, and no column matrix at all. :func:`~.unfold.row_blocks`
  stacks kw column-shifted copies of the padded input, (Hp, kw*C*OW*N); kh of its rows are a
  contiguous view of one output row's columns, (C*K, OW*N), so the forward pass is one product
  per output row (:func:`_by_output_rows`), dW a sum of one product per output row, and dx
  their adjoint (:func:`_input_grad_by_output_rows`). Each copy moves OW*N contiguous numbers
  where the batched layout copies rows of OW, and the blocks are kw times the input where the
  columns are kh*kw times, small enough to stay in cache. Training takes it for rows narrower
  than ``SHORT_ROW`` (LeNet's second layer); inference for every row width.

Training outputs are row-major. For inference (``inference=True``) the output is a
(N, F, OH, OW) view of (F, OH, OW, N) memory, so the activation and pooling after it run
over contiguous runs of the batch.
"""

from __future__ import annotations

from typing import NamedTuple

from ..runtime import namespace
from .unfold import Geometry, _cols, _fold, check_nchw, geometry, row_blocks, unpad

__all__ = ["conv2d_forward", "conv2d_backward", "ConvCache", "SHORT_ROW"]

SHORT_ROW = 16     # in training, output rows narrower than this use the batch-minor layout


class ConvCache(NamedTuple):
    """What :func:`conv2d_backward` needs from the forward pass: ``unfolded`` is the batched
    layout's columns (N, C*kh*kw, OH*OW) or the batch-minor layout's row blocks
    (Hp, kw*C*OW*N)."""

    unfolded: object
    geometry: Geometry
    input_shape: tuple
    layout: str


def _contiguous(xp, a):
    # Flattening a permuted array copies it into row-major order (a partial reshape may stay
    # a strided view); reshaping back is free. Later layers then walk memory in order.
    return xp.reshape(xp.reshape(a, (-1,)), tuple(a.shape))


def conv2d_forward(x, weight, bias=None, stride=1, padding=0, layout: str | None = None,
                   padding_mode: str = "zeros", inference: bool = False):
    """Convolve ``x`` (N, C, H, W) with ``weight`` (F, C, kh, kw) and add ``bias`` (F,).

    ``stride`` is an int or pair; ``padding`` an int, pair, ``"same"`` or ``"valid"``;
    ``padding_mode`` ``"zeros"`` or ``"replicate"`` (edge pixels repeated).
    ``layout`` forces ``"batched"`` or ``"batch_minor"`` (default: ``"batch_minor"`` for
    inference, else chosen by output width).
    ``inference=True`` says no backward pass follows: nothing is kept (the cache is None)
    and ``y`` is a view of batch-innermost memory. Otherwise ``y`` is row-major: the layers
    after it keep their output's memory order in what they cache, and their backward passes
    would mix it with row-major gradients (a tanh backward at batch 64: 76 -> 413 us).
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
    g = geometry((h, w), (kh, kw), stride, padding, padding_mode)
    if layout is None:
        layout = "batch_minor" if inference or g.ow < SHORT_ROW else "batched"
    if layout == "batched":
        unfolded = _cols(x, g)                               # (N, C*K, L)
        y = xp.reshape(weight, (f, c * kh * kw)) @ unfolded  # (N, F, L)
        if bias is not None:
            # Add one (F*L,) row of biases to each sample: with the bias broadcast along L,
            # NumPy's inner loop restarts every L numbers (LeNet's conv1: 90-107 -> 52 us).
            length = f * g.oh * g.ow
            row = xp.reshape(xp.broadcast_to(bias[:, None], (f, g.oh * g.ow)), (length,))
            y = xp.reshape(y, (n, length))
            y += row
        y = xp.reshape(y, (n, f, g.oh, g.ow))
    elif layout == "batch_minor":
        unfolded = row_blocks(x, g)                          # (Hp, kw*C*OW*N)
        y = _by_output_rows(unfolded, weight, g, n)          # (F, OH, OW*N)
        if bias is not None:
            y += bias[:, None, None]
        y = xp.permute_dims(xp.reshape(y, (f, g.oh, g.ow, n)), (3, 0, 1, 2))
        if not inference:
            y = _contiguous(xp, y)
    else:
        raise ValueError(f"layout must be 'batched' or 'batch_minor', got {layout!r}")
    return y, None if inference else ConvCache(unfolded, g, tuple(x.shape), layout)


def _by_output_rows(blocks, weight, g: Geometry, n: int):
    """The batch-minor product ``W @ cols`` one output row at a time, without building the
    (C*kh*kw, OH*OW*N) columns: output row r is ``W' @ block_r``, where block_r is a
    contiguous (kh*kw*C, OW*N) view of kh rows of ``blocks`` (:func:`~.unfold.row_blocks`)
    and ``W'`` the weight with its columns ordered (i, j, c). Returns (F, OH, OW*N).

    1 thread, batch 64, against the batch-minor columns: LeNet-5's second layer 949 -> 618
    us, and faster on each of eight other layer shapes (3-64 channels, 3x3 and 5x5 kernels,
    stride 1 and 2). Against the batched columns, for wide rows: LeNet-5's first layer
    1158 -> 625 us (7941 -> 4545 at batch 256; 56 and 112 pixel inputs ~2x), 32x32 inputs
    with 16-32 channels 1.4-1.9x; 3 input channels and batch 16 are 5-10% slower.
    """
    xp = namespace(blocks, weight)
    f, c, kh, kw = weight.shape
    w_rows = xp.reshape(xp.permute_dims(weight, (0, 2, 3, 1)), (f, kh * kw * c))
    y = xp.empty((f, g.oh, g.ow * n), dtype=blocks.dtype, device=blocks.device)
    for r in range(g.oh):
        top = r * g.sh
        y[:, r, :] = w_rows @ xp.reshape(blocks[top:top + kh, ...], (kh * kw * c, g.ow * n))
    return y


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
    unfolded, g, input_shape, layout = cache
    c = input_shape[1]
    dx = None
    if layout == "batched":
        dy_mat = xp.reshape(dy, (n, f, oh * ow))                      # (N, F, L)
        dweight = xp.sum(dy_mat @ xp.matrix_transpose(unfolded), axis=0)  # (F, C*K)
        dbias = xp.sum(dy_mat, axis=(0, 2))
        if need_dx:
            w_mat = xp.reshape(weight, (f, c * g.window))
            dx = _fold(xp.matrix_transpose(w_mat) @ dy_mat, g, input_shape)
    else:
        dy_mat = xp.reshape(xp.permute_dims(dy, (1, 2, 3, 0)), (f, oh * ow * n))  # (F, L*N)
        dweight = _weight_grad_by_output_rows(dy_mat, unfolded, weight.shape, g, n)
        dbias = xp.sum(dy_mat, axis=1)
        if need_dx:
            dx = _input_grad_by_output_rows(dy_mat, weight, g, input_shape)
    return dx, xp.reshape(dweight, weight.shape), dbias


def _weight_grad_by_output_rows(dy_mat, blocks, weight_shape, g: Geometry, n: int):
    """dW = dy @ cols^T in the batch-minor layout, as a sum over output rows r of
    ``block_r @ dy_r^T`` (block_r as in :func:`_by_output_rows`; the transposed product is
    the faster one in OpenBLAS for these shapes). Returns (F, C, kh, kw).

    LeNet-5's second layer, 1 thread, batch 32: 451 us, against 459 us from the full
    columns (which the blocks replace) and 514 us with ``dy_r @ block_r^T``.
    """
    xp = namespace(dy_mat, blocks)
    f, c, kh, kw = weight_shape
    rows = g.ow * n
    dy_rows = xp.reshape(dy_mat, (f, g.oh, rows))

    def product(r):                                                     # (kh*kw*C, F)
        block = xp.reshape(blocks[r * g.sh:r * g.sh + kh, ...], (kh * kw * c, rows))
        return block @ xp.matrix_transpose(dy_rows[:, r, :])

    acc = product(0)
    for r in range(1, g.oh):
        acc += product(r)
    return xp.permute_dims(xp.reshape(xp.matrix_transpose(acc), (f, kh, kw, c)), (0, 3, 1, 2))


def _input_grad_by_output_rows(dy_mat, weight, g: Geometry, input_shape):
    """dx = col2im(W^T @ dy) in the batch-minor layout, as the adjoint of
    :func:`_by_output_rows` and :func:`~.unfold.row_blocks`: output row r's product
    ``W'^T @ dy_r`` (kh*kw*C, OW*N) is added onto kh rows of a gradient of the row blocks,
    whose kw column shifts are then added into the padded input gradient.

    1 thread, against the two routes it replaced (one kernel offset at a time, or one product
    and a separable scatter): LeNet-5's second layer at batch 32 856 us against 1080 and
    1360, and the fastest of the three on each of nine layer shapes (3-32 channels, 3x3 and
    5x5 kernels, stride 1 and 2, batch 16-64).
    """
    xp = namespace(dy_mat, weight)
    f, c, kh, kw = weight.shape
    n, _, h, w = input_shape
    hp, wp = g.padded_hw(h, w)
    rows = g.ow * n
    w_t = xp.reshape(xp.permute_dims(weight, (2, 3, 1, 0)), (kh * kw * c, f))  # (i, j, c) x F
    dy_rows = xp.reshape(dy_mat, (f, g.oh, rows))
    dblocks = xp.zeros((hp, kw * c * rows), dtype=dy_mat.dtype, device=dy_mat.device)
    for r in range(g.oh):
        top = r * g.sh
        dblocks[top:top + kh, ...] += xp.reshape(w_t @ dy_rows[:, r, :], (kh, kw * c * rows))
    dshifted = xp.reshape(dblocks, (hp, kw, c, g.ow, n))
    buf = xp.zeros((hp, c, wp, n), dtype=dy_mat.dtype, device=dy_mat.device)
    for j in range(kw):
        buf[:, :, g.cols_at(j), :] += dshifted[:, j, ...]
    return _batch_first(xp, xp.permute_dims(buf, (1, 0, 2, 3)), g)


def _batch_first(xp, buf, g: Geometry):
    """(C, Hp, Wp, N) padded gradient -> (N, C, H, W), padding removed, row-major."""
    dx_cm = unpad(buf, g, axis=1)                                               # (C, H, W, N)
    return _contiguous(xp, xp.permute_dims(dx_cm, (3, 0, 1, 2)))
