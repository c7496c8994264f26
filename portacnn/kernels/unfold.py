"""Window geometry, padding, and the im2col / col2im pair that convolution and pooling share.

Layout (the one of ``torch.nn.functional.unfold``)::

    x     (N, C, H, W)
    cols  (N, C*kh*kw, OH*OW)      row index = c*kh*kw + i*kw + j

so a convolution is one matrix product ``W.reshape(F, C*kh*kw) @ cols``.

Output size, with padding (top, bottom) and stride s::

    OH = floor((H + top + bottom - kh) / s) + 1

Padding may be an int, a pair ``(ph, pw)``, ``"valid"`` (none) or ``"same"``. ``"same"`` follows
TensorFlow: ``OH = ceil(H / s)``, the total padding ``max((OH - 1) * s + kh - H, 0)`` split with the
extra pixel at the bottom/right; with stride 1 and an odd kernel this keeps ``H`` unchanged.

``padding_mode`` is ``"zeros"`` (a constant: 0, or -inf for max pooling) or ``"replicate"`` (the
edge pixels repeated, as ``torch.nn.functional.pad(mode="replicate")``). Its adjoint,
:func:`unpad`, crops for constant padding and, for replicate padding, adds each padded row and
column's gradient back onto the edge pixel it copied.

Only the array API standard is used: strided slices, ``stack`` and slice assignment. No fancy
indexing, no scatter-add, no ``as_strided``.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

from ..runtime import namespace

__all__ = ["Geometry", "geometry", "im2col", "col2im", "pad", "windows", "column_shifts",
           "row_shift", "scatter_windows", "scatter_add_windows", "crop", "unpad",
           "pad_batch_minor", "row_blocks", "repeat_pixels", "PADDING_MODES"]


class Geometry(NamedTuple):
    """Everything a windowed op needs to know about its shapes (all ints)."""

    kh: int
    kw: int
    sh: int
    sw: int
    top: int
    bottom: int
    left: int
    right: int
    oh: int
    ow: int
    mode: str = "zeros"

    @property
    def padded(self) -> bool:
        return bool(self.top or self.bottom or self.left or self.right)

    @property
    def window(self) -> int:
        """Pixels per window, ``kh * kw``."""
        return self.kh * self.kw

    def padded_hw(self, h: int, w: int) -> tuple[int, int]:
        """``(Hp, Wp)``: the spatial size of an (H, W) input after padding."""
        return h + self.top + self.bottom, w + self.left + self.right

    # The padded rows (columns) that kernel row i (column j) meets, one per output row
    # (column). The stop stays in bounds: NumPy clips a slice silently, strict does not.
    def rows_at(self, i: int) -> slice:
        return slice(i, i + self.sh * (self.oh - 1) + 1, self.sh)

    def cols_at(self, j: int) -> slice:
        return slice(j, j + self.sw * (self.ow - 1) + 1, self.sw)


def _pair(value, name: str) -> tuple[int, int]:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if isinstance(value, int):
        return value, value
    try:
        a, b = value
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}") from None
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (a, b)):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    return a, b


def kernel_pair(kernel_size) -> tuple[int, int]:
    """``kernel_size`` as ``(kh, kw)``, checked to be positive."""
    kh, kw = _pair(kernel_size, "kernel_size")
    if kh <= 0 or kw <= 0:
        raise ValueError(f"kernel_size must be positive, got {kernel_size!r}")
    return kh, kw


def stride_pair(stride) -> tuple[int, int]:
    """``stride`` as ``(sh, sw)``, checked to be positive."""
    sh, sw = _pair(stride, "stride")
    if sh <= 0 or sw <= 0:
        raise ValueError(f"stride must be a positive int or pair, got {stride!r}")
    return sh, sw


def check_padding(padding) -> None:
    """Raise early for a padding spec that can never be valid."""
    if isinstance(padding, str):
        if padding not in ("same", "valid"):
            raise ValueError(f"padding must be an int, a pair, 'same' or 'valid', got {padding!r}")
        return
    ph, pw = _pair(padding, "padding")
    if ph < 0 or pw < 0:
        raise ValueError(f"padding must be non-negative, got {padding!r}")


def _same_padding(size: int, k: int, s: int) -> tuple[int, int]:
    out = math.ceil(size / s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2


PADDING_MODES = ("zeros", "replicate")


def check_padding_mode(mode) -> None:
    """Raise ``ValueError`` for an unknown padding mode."""
    if mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be 'zeros' or 'replicate', got {mode!r}")


def geometry(input_hw, kernel_size, stride=1, padding=0, padding_mode="zeros") -> Geometry:
    """Resolve kernel, stride and padding for an input of spatial size ``(H, W)``.

    Raises ``ValueError`` when the kernel is larger than the padded input or a value is out of
    range, naming the sizes involved.
    """
    key = (tuple(input_hw), _frozen(kernel_size), _frozen(stride), _frozen(padding), padding_mode)
    try:
        return _geometry_cached(*key)
    except TypeError:                       # an unhashable argument: resolve without the cache
        return _geometry(*key)


def _frozen(value):
    return tuple(value) if isinstance(value, list) else value


# Layers ask for the same few geometries every batch; resolving one costs ~15 us of Python.
@functools.lru_cache(maxsize=256)
def _geometry_cached(input_hw, kernel_size, stride, padding, padding_mode) -> Geometry:
    return _geometry(input_hw, kernel_size, stride, padding, padding_mode)


def _geometry(input_hw, kernel_size, stride, padding, padding_mode) -> Geometry:
    h, w = input_hw
    kh, kw = kernel_pair(kernel_size)
    sh, sw = stride_pair(stride)
    check_padding(padding)
    if padding == "valid":
        top = bottom = left = right = 0
    elif padding == "same":
        top, bottom = _same_padding(h, kh, sh)
        left, right = _same_padding(w, kw, sw)
    else:
        ph, pw = _pair(padding, "padding")
        top = bottom = ph
        left = right = pw
    hp, wp = h + top + bottom, w + left + right
    if kh > hp or kw > wp:
        raise ValueError(
            f"kernel {kh}x{kw} is larger than the padded input {hp}x{wp} "
            f"(input {h}x{w}): use a smaller kernel, more padding, or a larger input"
        )
    oh = (hp - kh) // sh + 1
    ow = (wp - kw) // sw + 1
    check_padding_mode(padding_mode)
    return Geometry(kh, kw, sh, sw, top, bottom, left, right, oh, ow, padding_mode)


def check_nchw(x, what: str = "input") -> None:
    """Raise ``ValueError`` unless ``x`` is 4-D (N, C, H, W)."""
    if x.ndim != 4:
        raise ValueError(
            f"{what} must be 4-D (N, C, H, W), got shape {tuple(x.shape)}; "
            "add a batch axis with x[None, ...] or a channel axis with x[:, None, ...]"
        )


def pad(x, g: Geometry, value: float = 0.0):
    """Pad ``x`` (N, C, H, W) spatially by ``g``'s padding: ``value`` for ``"zeros"`` mode (the
    constant), the edge pixels for ``"replicate"``."""
    if not g.padded:
        return x
    xp = namespace(x)
    n, c, h, w = x.shape
    if g.mode == "replicate":
        return _replicate(xp, x, g)
    buf = xp.full((n, c) + g.padded_hw(h, w), value, dtype=x.dtype, device=x.device)
    buf[:, :, g.top : g.top + h, g.left : g.left + w] = x
    return buf


def _replicate(xp, x, g: Geometry):
    n, c, h, w = x.shape
    parts = [xp.broadcast_to(x[:, :, :1, :], (n, c, g.top, w))] if g.top else []
    parts += [x] + ([xp.broadcast_to(x[:, :, h - 1 :, :], (n, c, g.bottom, w))] if g.bottom else [])
    tall = xp.concat(parts, axis=2) if len(parts) > 1 else x
    hp, _ = g.padded_hw(h, w)
    parts = [xp.broadcast_to(tall[:, :, :, :1], (n, c, hp, g.left))] if g.left else []
    parts += [tall] + ([xp.broadcast_to(tall[:, :, :, w - 1 :], (n, c, hp, g.right))]
                       if g.right else [])
    return xp.concat(parts, axis=3) if len(parts) > 1 else tall


def unpad(buf, g: Geometry, axis: int = 2):
    """Adjoint of :func:`pad` on the spatial axes (axis, axis + 1) of a padded gradient.

    ``"zeros"``: crop. ``"replicate"``: crop, then add the gradient of the padded columns onto
    the first/last column and of the padded rows onto the first/last row (corners included,
    since the columns are folded before the rows).
    """
    if g.mode != "replicate" or not g.padded:
        return crop(buf, g, axis)
    xp = namespace(buf)
    lead = (slice(None),) * axis
    hp, wp = buf.shape[axis], buf.shape[axis + 1]
    w = wp - g.left - g.right
    # columns, on every padded row
    inner = xp.asarray(buf[lead + (slice(None), slice(g.left, g.left + w), ...)], copy=True)
    if g.left:
        inner[lead + (slice(None), slice(0, 1), ...)] += xp.sum(
            buf[lead + (slice(None), slice(0, g.left), ...)], axis=axis + 1, keepdims=True)
    if g.right:
        inner[lead + (slice(None), slice(w - 1, w), ...)] += xp.sum(
            buf[lead + (slice(None), slice(g.left + w, wp), ...)], axis=axis + 1, keepdims=True)
    h = hp - g.top - g.bottom
    out = xp.asarray(inner[lead + (slice(g.top, g.top + h), ...)], copy=True)
    if g.top:
        out[lead + (slice(0, 1), ...)] += xp.sum(inner[lead + (slice(0, g.top), ...)], axis=axis,
                                                 keepdims=True)
    if g.bottom:
        out[lead + (slice(h - 1, h), ...)] += xp.sum(inner[lead + (slice(g.top + h, hp), ...)],
                                                     axis=axis, keepdims=True)
    return out


def window_slice(g: Geometry, i: int, j: int, axis: int = 2):
    # The window at kernel offset (i, j) for every output pixel, as one strided slice of the
    # two spatial axes (axis, axis + 1).
    return (slice(None),) * axis + (g.rows_at(i), g.cols_at(j), ...)


def windows(xpad, g: Geometry, axis: int = 2):
    """Stack every window offset of a padded input along a new axis ``axis``.

    With NCHW input (spatial axes 2, 3) the result is (N, C, kh*kw, OH, OW); with the
    batch-innermost (C, H, W, N) layout and ``axis=1`` it is (C, kh*kw, OH, OW, N).

    Built in two passes: the kw column shifts first, then the kh row shifts of that stack,
    whose copies move whole contiguous (OH, OW) blocks rather than rows of OW numbers
    (0.73 -> 0.60 ms on LeNet's first layer, 1.33 -> 0.78 ms on its second, batch 64).
    """
    xp = namespace(xpad)
    cols = column_shifts(xpad, g, axis)                      # (..., kw, Hp, OW, ...)
    rows = xp.stack([cols[row_shift(g, i, axis)] for i in range(g.kh)],
                    axis=axis)                               # (..., kh, kw, OH, OW, ...)
    shape = tuple(rows.shape)
    return xp.reshape(rows, shape[:axis] + (g.kh * g.kw,) + shape[axis + 2:])


def column_shifts(xpad, g: Geometry, axis: int = 2):
    """The first pass of :func:`windows`: the kw column-strided slices of a padded input
    (spatial axes ``axis``, ``axis + 1``) stacked on a new axis ``axis``:
    (..., Hp, Wp, ...) -> (..., kw, Hp, OW, ...)."""
    lead = (slice(None),) * axis
    return namespace(xpad).stack(
        [xpad[lead + (slice(None), g.cols_at(j), ...)]
         for j in range(g.kw)], axis=axis)


def row_shift(g: Geometry, i: int, axis: int = 2):
    """Index of the rows at kernel row ``i`` in a :func:`column_shifts` stack whose kw axis is
    ``axis``: (..., kw, Hp, OW, ...) -> (..., kw, OH, OW, ...)."""
    return (slice(None),) * (axis + 1) + (g.rows_at(i), ...)


def repeat_pixels(x, factors):
    """Nearest-neighbour upsampling of the last two axes: each pixel becomes an (rh, rw)
    block. (..., H, W) -> (..., H*rh, W*rw). Two stacked copies, no fancy indexing."""
    xp = namespace(x)
    rh, rw = factors
    shape = tuple(x.shape)
    lead, (h, w) = shape[:-2], shape[-2:]
    wide = xp.reshape(xp.stack([x] * rw, axis=x.ndim), lead + (h, w * rw))
    tall = xp.stack([wide] * rh, axis=wide.ndim - 1)         # (..., H, rh, W*rw)
    return xp.reshape(tall, lead + (h * rh, w * rw))


def scatter_add_windows(dwin, g: Geometry, padded_shape, axis: int = 2):
    """Adjoint of :func:`windows`: sum window gradients (window axis at ``axis``) into a zero
    buffer of ``padded_shape``. Overlapping windows add up; pixels no window covers get zero."""
    xp = namespace(dwin)
    buf = xp.zeros(tuple(padded_shape), dtype=dwin.dtype, device=dwin.device)
    lead = (slice(None),) * axis
    k = 0
    for i in range(g.kh):
        for j in range(g.kw):
            key = window_slice(g, i, j, axis)
            buf[key] += dwin[lead + (k, ...)]
            k += 1
    return buf


def crop(buf, g: Geometry, axis: int = 2):
    """Remove ``g``'s padding from the spatial axes (axis, axis + 1) of ``buf``."""
    if not g.padded:
        return buf
    hp, wp = buf.shape[axis], buf.shape[axis + 1]
    key = (slice(None),) * axis + (slice(g.top, hp - g.bottom), slice(g.left, wp - g.right), ...)
    return buf[key]


def scatter_windows(dwin, g: Geometry, input_shape):
    """Adjoint of :func:`pad` then :func:`windows` for NCHW: (N, C, kh*kw, OH, OW) -> x."""
    n, c, h, w = input_shape
    padded = (n, c) + g.padded_hw(h, w)
    return unpad(scatter_add_windows(dwin, g, padded), g)


def pad_batch_minor(x, g: Geometry):
    """NCHW ``x`` -> padded (Hp, C, Wp, N): the batch innermost, so each window slice moves
    rows of OW*N contiguous numbers instead of OW, and the rows outermost, as
    :func:`row_blocks` wants them (see :mod:`portacnn.kernels.conv`)."""
    xp = namespace(x)
    if g.mode == "replicate":
        return xp.permute_dims(pad(x, g), (2, 1, 3, 0))
    n, c, h, w = x.shape
    hp, wp = g.padded_hw(h, w)
    buf = xp.zeros((hp, c, wp, n), dtype=x.dtype, device=x.device)
    buf[g.top:g.top + h, :, g.left:g.left + w, ...] = xp.permute_dims(x, (2, 1, 3, 0))
    return buf


def row_blocks(x, g: Geometry):
    """NCHW ``x`` -> (Hp, kw*C*OW*N), the kw column shifts of the padded input with the
    batch innermost: row p, entry (j, c, ow, n) is ``xpad[n, c, p, ow*sw + j]``.

    The kh rows from ``r * sh`` on, reshaped to (kh*kw*C, OW*N), are then the im2col columns
    of output row r, rows ordered (i, j, c): a convolution needs kh rows of this (kw*C*OW*N
    numbers each) per output row instead of the whole (C*kh*kw, OH*OW*N) column matrix.
    """
    xp = namespace(x)
    n, c = x.shape[:2]
    xpad = pad_batch_minor(x, g)                                        # (Hp, C, Wp, N)
    shifted = xp.stack([xpad[:, :, g.cols_at(j), :] for j in range(g.kw)], axis=1)
    return xp.reshape(shifted, (xpad.shape[0], g.kw * c * g.ow * n))


def im2col(x, kernel_size, stride=1, padding=0, padding_mode="zeros"):
    """Unfold every receptive field of ``x`` into a column.

    Args:
        x: (N, C, H, W) input.
        kernel_size, stride, padding, padding_mode: as in :func:`geometry`.

    Returns:
        cols: (N, C*kh*kw, OH*OW), padding included.
    """
    check_nchw(x)
    n, c, h, w = x.shape
    g = geometry((h, w), kernel_size, stride, padding, padding_mode)
    return _cols(x, g)


def _cols(x, g: Geometry):
    xp = namespace(x)
    n, c = x.shape[:2]
    return xp.reshape(windows(pad(x, g), g), (n, c * g.window, g.oh * g.ow))


def col2im(cols, input_shape, kernel_size, stride=1, padding=0, padding_mode="zeros"):
    """Fold columns back onto an image, summing overlaps: the exact adjoint of :func:`im2col`.

    Args:
        cols: (N, C*kh*kw, OH*OW).
        input_shape: (N, C, H, W) of the image ``im2col`` was applied to.

    Returns:
        (N, C, H, W) with ``<im2col(x), cols> == <x, col2im(cols)>`` for every x.
    """
    n, c, h, w = input_shape
    g = geometry((h, w), kernel_size, stride, padding, padding_mode)
    expected = (n, c * g.window, g.oh * g.ow)
    if tuple(cols.shape) != expected:
        raise ValueError(f"cols has shape {tuple(cols.shape)}, expected {expected} for this input")
    return _fold(cols, g, input_shape)


def _fold(cols, g: Geometry, input_shape):
    xp = namespace(cols)
    n, c = input_shape[:2]
    return scatter_windows(xp.reshape(cols, (n, c, g.window, g.oh, g.ow)), g, input_shape)
