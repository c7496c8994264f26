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

Everything here is functional (no array is written after it is made), so it runs on JAX as on
NumPy: the standard's strided slices, ``stack`` and ``concat``, and array-api-extra's ``pad``
and ``at(...).add`` (in place on NumPy, CuPy and torch; a new array on JAX). No fancy
indexing, no ``as_strided``.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import array_api_extra as xpx

from ..namespace import namespace

__all__ = ["Geometry", "geometry", "im2col", "col2im", "unfold", "fold", "pad", "unpad", "crop",
           "windows", "scatter_windows", "repeat_pixels", "check_nchw", "PADDING_MODES"]


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
    if g.mode == "replicate":
        return _replicate(namespace(x), x, g)
    widths = ((0, 0), (0, 0), (g.top, g.bottom), (g.left, g.right))
    return xpx.pad(x, widths, constant_values=value)


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


def crop(buf, g: Geometry, axis: int = 2):
    """Remove ``g``'s padding from the spatial axes (axis, axis + 1) of ``buf``."""
    if not g.padded:
        return buf
    hp, wp = buf.shape[axis], buf.shape[axis + 1]
    key = (slice(None),) * axis + (slice(g.top, hp - g.bottom), slice(g.left, wp - g.right), ...)
    return buf[key]


def unpad(buf, g: Geometry, axis: int = 2):
    """Adjoint of :func:`pad` on the spatial axes (axis, axis + 1) of a padded gradient.

    ``"zeros"``: crop. ``"replicate"``: crop, then add the gradient of the padded columns onto
    the first/last column and of the padded rows onto the first/last row (corners included,
    since the columns are folded before the rows). ``buf`` is consumed: it may be updated in
    place.
    """
    if g.mode != "replicate" or not g.padded:
        return crop(buf, g, axis)
    folded = _fold_edges(buf, g.left, g.right, axis + 1)
    return _fold_edges(folded, g.top, g.bottom, axis)


def _fold_edges(buf, before: int, after: int, axis: int):
    # Crop `before` and `after` entries of `axis`, adding their sum onto the first / last kept.
    xp = namespace(buf)
    size = buf.shape[axis] - before - after

    def at(start, stop):
        return (slice(None),) * axis + (slice(start, stop), ...)

    inner = buf[at(before, before + size)]
    if before:
        inner = xpx.at(inner, at(0, 1)).add(xp.sum(buf[at(0, before)], axis=axis, keepdims=True))
    if after:
        tail = buf[at(before + size, before + size + after)]
        inner = xpx.at(inner, at(size - 1, size)).add(xp.sum(tail, axis=axis, keepdims=True))
    return inner


def window_slice(g: Geometry, i: int, j: int):
    """The pixels kernel offset (i, j) meets, one per output pixel: a strided slice of the
    spatial axes of a padded (N, C, Hp, Wp) array, giving (N, C, OH, OW)."""
    return (slice(None), slice(None), g.rows_at(i), g.cols_at(j))


def windows(xpad, g: Geometry):
    """Every window offset of a padded (N, C, Hp, Wp) input, stacked on a new axis 2:
    (N, C, kh*kw, OH, OW), offset k = i*kw + j."""
    xp = namespace(xpad)
    return xp.stack([xpad[window_slice(g, i, j)] for i in range(g.kh) for j in range(g.kw)],
                    axis=2)


def scatter_windows(dwin, g: Geometry, input_shape):
    """Adjoint of :func:`pad` then :func:`windows`: (N, C, kh*kw, OH, OW) window gradients
    summed back onto the (N, C, H, W) input. Overlapping windows add up; pixels no window
    covers get zero.

    Separable, like the windows it undoes: the kh row offsets are added first, each moving all
    kw column offsets at once into a (N, C, kw, Hp, OW) buffer, then the kw column offsets into
    the padded input: kh + kw additions instead of kh*kw.
    """
    xp = namespace(dwin)
    n, c, h, w = input_shape
    hp, wp = g.padded_hw(h, w)
    dwin = xp.reshape(dwin, (n, c, g.kh, g.kw, g.oh, g.ow))
    rows = xp.zeros((n, c, g.kw, hp, g.ow), dtype=dwin.dtype, device=dwin.device)
    for i in range(g.kh):
        rows = xpx.at(rows, (slice(None), slice(None), slice(None), g.rows_at(i), ...)).add(
            dwin[:, :, i, ...])
    buf = xp.zeros((n, c, hp, wp), dtype=dwin.dtype, device=dwin.device)
    for j in range(g.kw):
        buf = xpx.at(buf, (slice(None), slice(None), slice(None), g.cols_at(j))).add(
            rows[:, :, j, ...])
    return unpad(buf, g)


def repeat_pixels(x, factors):
    """Nearest-neighbour upsampling of the last two axes: each pixel becomes an (rh, rw)
    block. (..., H, W) -> (..., H*rh, W*rw): one broadcast and one copy."""
    xp = namespace(x)
    rh, rw = factors
    shape = tuple(x.shape)
    lead, (h, w) = shape[:-2], shape[-2:]
    blocks = xp.broadcast_to(xp.reshape(x, lead + (h, 1, w, 1)), lead + (h, rh, w, rw))
    return xp.reshape(blocks, lead + (h * rh, w * rw))


def im2col(x, kernel_size, stride=1, padding=0, padding_mode="zeros"):
    """Unfold every receptive field of ``x`` into a column.

    Args:
        x: (N, C, H, W) input.
        kernel_size, stride, padding, padding_mode: as in :func:`geometry`.

    Returns:
        cols: (N, C*kh*kw, OH*OW), padding included.
    """
    check_nchw(x)
    return unfold(x, geometry(tuple(x.shape[2:]), kernel_size, stride, padding, padding_mode))


def unfold(x, g: Geometry):
    """:func:`im2col` for a resolved geometry: (N, C, H, W) -> (N, C*kh*kw, OH*OW)."""
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
    return fold(cols, g, input_shape)


def fold(cols, g: Geometry, input_shape):
    """:func:`col2im` for a resolved geometry: (N, C*kh*kw, OH*OW) -> (N, C, H, W)."""
    n, c = input_shape[:2]
    return scatter_windows(namespace(cols).reshape(cols, (n, c, g.window, g.oh, g.ow)), g,
                           input_shape)
