"""JAX's kernel set: :class:`JaxKernels`, the portable set with XLA's own convolution.

XLA compiles the portable im2col convolution (:mod:`portacnn.kernels.conv`) into slow CPU code:
the strided slices and the batched product of the columns are each a separate loop nest, and
the input gradient builds columns of its own. XLA has a convolution of its own,
``jax.lax.conv_general_dilated``, which it lowers to its fastest convolution for the device
(Eigen's on a CPU, cuDNN's on a GPU). This set runs it:

| override | what it does instead of the portable kernel |
|---|---|
| ``conv2d_forward`` | ``lax.conv_general_dilated``: NCHW / OIHW, the geometry's stride, padding |
| ``conv2d_backward`` | that convolution's transposes in the input and in the weight |

Groups are XLA's ``feature_group_count``. Replicate padding pads with the portable
:func:`~portacnn.kernels.padding.pad` first and convolves unpadded; backward folds the border's
gradient back with :func:`~portacnn.kernels.padding.unpad`. The transposes are
``jax.linear_transpose``: the vector-Jacobian products of a function linear in each argument,
without running the forward again as ``jax.vjp`` would eagerly.

Each override takes the same arguments and returns the same values as the portable kernel of
its name (tests/test_jax_kernels.py checks them against it and the naive loops, eagerly and
under ``jax.jit``). JAX is imported when a kernel first runs, so portacnn imports without it.
"""

from __future__ import annotations

from typing import NamedTuple

from ..kernels import Kernels
from ..kernels.conv import conv_geometry
from ..kernels.padding import pad, unpad
from ..kernels.shapes import Geometry

__all__ = ["JaxKernels", "XlaConvCache", "conv2d_forward", "conv2d_backward"]


class XlaConvCache(NamedTuple):
    """What :func:`conv2d_backward` needs from the forward pass: the convolution's operands."""

    source: object          # (N, C, H', W'): the input, or its replicate-padded copy
    geometry: Geometry
    input_shape: tuple
    groups: int = 1


def conv2d_forward(x, weight, bias=None, stride=1, padding=0, padding_mode: str = "zeros", *,
                   groups: int = 1, inference: bool = False):
    """:func:`portacnn.kernels.conv.conv2d_forward` by XLA's convolution: ``x`` (N, C, H, W),
    ``weight`` (F, C/groups, kh, kw), ``bias`` (F,) -> ``(y, cache)``, ``y`` (N, F, OH, OW);
    the cache is None with ``inference=True``."""
    g = conv_geometry(x, weight, stride, padding, padding_mode, groups)
    source = pad(x, g) if g.mode == "replicate" else x
    y = _convolve(source, weight, g, groups)
    if bias is not None:
        y = y + bias[:, None, None]
    return y, None if inference else XlaConvCache(source, g, tuple(x.shape), groups)


def conv2d_backward(dy, weight, cache: XlaConvCache, need_dx: bool = True):
    """:func:`portacnn.kernels.conv.conv2d_backward`: ``dy`` (N, F, OH, OW) ->
    ``(dx, dweight, dbias)``, ``dx`` None when ``need_dx`` is False."""
    import jax

    source, g, _, groups = cache
    (dweight,) = jax.linear_transpose(lambda w: _convolve(source, w, g, groups), weight)(dy)
    dbias = jax.numpy.sum(dy, axis=(0, 2, 3))
    if not need_dx:
        return None, dweight, dbias
    (dsource,) = jax.linear_transpose(lambda s: _convolve(s, weight, g, groups), source)(dy)
    return (unpad(dsource, g) if g.mode == "replicate" else dsource), dweight, dbias


def _convolve(source, weight, g: Geometry, groups: int):
    """The cross-correlation of ``source`` with ``weight`` by ``g``'s strides, and its zero
    padding (none for replicate: ``source`` is padded already)."""
    from jax import lax

    pads = ((0, 0), (0, 0)) if g.mode == "replicate" else ((g.top, g.bottom), (g.left, g.right))
    return lax.conv_general_dilated(source, weight, (g.sh, g.sw), pads,
                                    dimension_numbers=("NCHW", "OIHW", "NCHW"),
                                    feature_group_count=groups)


class JaxKernels(Kernels):
    """:class:`~portacnn.kernels.Kernels` with XLA's convolution (the table above); every
    other kernel, and the work sizes, are the portable set's."""

    conv2d_forward = staticmethod(conv2d_forward)
    conv2d_backward = staticmethod(conv2d_backward)
