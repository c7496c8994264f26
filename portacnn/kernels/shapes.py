"""Window geometry: the kernel, stride and padding arguments checked and resolved to sizes.

Convolution, pooling and im2col all slide a kh x kw window over an (N, C, H, W) input.
:func:`geometry` turns their ``kernel_size``, ``stride``, ``padding`` and ``padding_mode``
arguments and the input's (H, W) into a :class:`Geometry` of plain ints that the kernels read.

Output size, with padding (top, bottom) and stride s (the same along W with (left, right))::

    OH = floor((H + top + bottom - kh) / s) + 1

Padding may be an int, a pair ``(ph, pw)``, ``"valid"`` (none) or ``"same"``. ``"same"`` follows
TensorFlow: ``OH = ceil(H / s)``, the total padding ``max((OH - 1) * s + kh - H, 0)`` split with the
extra pixel at the bottom/right; with stride 1 and an odd kernel this keeps ``H`` unchanged.

``padding_mode`` is ``"zeros"`` (a constant) or ``"replicate"`` (the edge pixels repeated); see
:mod:`.padding`.

The checks (:func:`kernel_pair`, :func:`stride_pair`, :func:`check_padding`,
:func:`check_padding_mode`, :func:`check_nchw`) run at the boundary: in the layers
and the kernels' entry points (``conv2d_forward``, the pooling forwards). The helpers those call
(:mod:`.padding`, :mod:`.columns`) check nothing and trust a resolved :class:`Geometry`.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

from ..scalars import is_int

__all__ = ["Geometry", "batch_dim", "geometry", "kernel_pair", "stride_pair", "check_padding",
           "padding_pair", "check_padding_mode", "check_nchw", "PADDING_MODES"]


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
    # Whole numbers of any integer type (np.int64 too), returned as plain ints.
    if is_int(value):
        return int(value), int(value)
    try:
        a, b = value
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}") from None
    if not (is_int(a) and is_int(b)):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    return int(a), int(b)


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
    padding_pair(padding)


def padding_pair(padding) -> tuple[int, int]:
    """A numeric ``padding`` as ``(ph, pw)``, checked to be non-negative."""
    ph, pw = _pair(padding, "padding")
    if ph < 0 or pw < 0:
        raise ValueError(f"padding must be non-negative, got {padding!r}")
    return ph, pw


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


# Layers ask for the same few geometries every batch: resolve each once, not per call.
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


def batch_dim(x) -> int:
    """``x.shape[0]`` for a reshape, or -1 (reshape infers it) where the batch size is unknown
    until the graph runs: a traced input's symbolic batch (``ndonnx``'s ``"N"``) has None."""
    n = x.shape[0]
    return -1 if n is None else n
