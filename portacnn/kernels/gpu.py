"""The GPU's kernel set: :class:`GpuKernels`, the portable set with fewer launches for pooling.

On a GPU every array operation is a kernel launch of some 10-30 µs from Python, so the
question is how many operations a step issues, not how its memory is walked. The portable
pooling forward stacks the kh*kw window offsets (one copy) and reduces the stack (one
reduction). Where the windows tile the input exactly (stride equal to the kernel, no padding,
the image a whole number of windows) they are already a view of it, (N, C, OH, kh, OW, kw),
and one reduction over axes 3 and 5 does: one launch instead of two. A GPU reduces over
strided axes in one kernel; a CPU's NumPy or PyTorch is several times slower at it than over
the stack, which is why this is the GPU's set and not the portable code.

| override | what it does instead of the portable kernel |
|---|---|
| ``avg_pool2d_forward`` | tiling windows: one ``mean`` over the view (training and inference) |
| ``max_pool2d_forward``, ``min_pool2d_forward`` | tiling windows, inference: one ``max`` / ``min`` over the view (training needs the argmax of a window axis: portable) |

Each override returns what the portable kernel returns (the same cache, so the portable
backward passes serve), and falls back to it for every other geometry. Tested against the
portable kernels and the naive loops on every backend (tests/test_gpu_kernels.py).
"""

from __future__ import annotations

from ..namespace import namespace
from . import pooling
from .pooling import PoolCache, pool_geometry
from .sets import Kernels
from .shapes import Geometry

__all__ = ["GpuKernels", "tiles_exactly"]


def tiles_exactly(g: Geometry, h: int, w: int) -> bool:
    """True when the windows of ``g`` cover an (h, w) image exactly, without overlap, gap,
    padding or remainder: the windows are then a reshape of the image."""
    return (g.sh == g.kh and g.sw == g.kw and not g.padded
            and g.oh * g.kh == h and g.ow * g.kw == w)


def _tiles(x, g: Geometry):
    """The windows of ``x`` (N, C, H, W) as a view (N, C, OH, kh, OW, kw)."""
    n, c = x.shape[:2]
    return namespace(x).reshape(x, (n, c, g.oh, g.kh, g.ow, g.kw))


def avg_pool2d_forward(x, kernel_size, stride=None, padding=0, padding_mode="zeros", *,
                       inference: bool = False):
    """:func:`portacnn.kernels.pooling.avg_pool2d_forward` in one reduction where the windows
    tile ``x`` (N, C, H, W) exactly. Returns ``(y, cache)``, y (N, C, OH, OW)."""
    g = pool_geometry(x, kernel_size, stride, padding, padding_mode)
    if not tiles_exactly(g, x.shape[2], x.shape[3]):
        return pooling.avg_pool2d_forward(x, kernel_size, stride, padding, padding_mode,
                                          inference=inference)
    y = namespace(x).mean(_tiles(x, g), axis=(3, 5))
    return y, None if inference else PoolCache(None, g, tuple(x.shape))


def _extreme(which: str, portable):
    """Max or min pooling (``which``): one reduction of the view in inference where the
    windows tile ``x`` exactly, else ``portable``, the portable kernel of that name."""

    def forward(x, kernel_size, stride=None, padding=0, padding_mode="zeros", *,
                inference: bool = False):
        g = pool_geometry(x, kernel_size, stride, padding, padding_mode)
        if inference and tiles_exactly(g, x.shape[2], x.shape[3]):
            return getattr(namespace(x), which)(_tiles(x, g), axis=(3, 5)), None
        return portable(x, kernel_size, stride, padding, padding_mode, inference=inference)

    forward.__name__ = forward.__qualname__ = f"{which}_pool2d_forward"
    forward.__doc__ = (f":func:`portacnn.kernels.pooling.{which}_pool2d_forward`; in inference "
                       "one reduction where the windows tile ``x`` exactly.")
    return forward


max_pool2d_forward = _extreme("max", pooling.max_pool2d_forward)
min_pool2d_forward = _extreme("min", pooling.min_pool2d_forward)


class GpuKernels(Kernels):
    """:class:`~.sets.Kernels` with the GPU's overrides: the CuPy backend's set. Whole batches
    at once and fused optimizer updates, as in the portable set."""

    avg_pool2d_forward = staticmethod(avg_pool2d_forward)
    max_pool2d_forward = staticmethod(max_pool2d_forward)
    min_pool2d_forward = staticmethod(min_pool2d_forward)
