"""im2col and col2im: every receptive field as a column, and the sum back onto the image.

Layout (the one of ``torch.nn.functional.unfold``)::

    x     (N, C, H, W)
    cols  (N, C*kh*kw, OH*OW)      row index = c*kh*kw + i*kw + j, column = oh*OW + ow

so a convolution is one matrix product ``W.reshape(F, C*kh*kw) @ cols`` (:mod:`.conv`), and so
is its input gradient: an im2col of the framed output gradient. Pooling reduces the same
windows before they are flattened, (N, C, kh*kw, OH, OW) (:func:`windows`). Neither sends a
gradient back with a scatter (:mod:`.conv`, :mod:`.pooling`).

:func:`col2im` is the adjoint of :func:`im2col`: it adds each column entry back onto the pixel
it was copied from, so overlapping windows sum and pixels no window covers get zero::

    <im2col(x, g), cols> == <x, col2im(cols, g, x.shape)>      for every x and cols.

It is the textbook way back from columns, kept public and tested as the adjoint; the portable
kernels no longer call it, since its kh + kw scatter-adds are 2(kh + kw) launches on a GPU.

Both take a :class:`~.shapes.Geometry` already resolved (and so checked) by
:func:`~.shapes.geometry`; they check nothing themselves. im2col stacks the kh*kw strided
slices of the padded input (no fancy indexing, no ``as_strided``); col2im adds them back with
array-api-extra's ``at(...).add``, the kh row offsets first and then the kw column offsets.
Nothing is written after it is made, so both run on JAX as on NumPy.
"""

from __future__ import annotations

import array_api_extra as xpx
from array_api_compat import device as device_of

from ..namespace import namespace
from .shapes import Geometry, batch_dim
from .padding import pad, unpad

__all__ = ["im2col", "col2im", "windows", "scatter_windows", "window_slice"]


def im2col(x, g: Geometry):
    """Unfold every receptive field of ``x`` into a column, padding included.

    Args:
        x: (N, C, H, W) input.
        g: its geometry, ``geometry((H, W), kernel_size, stride, padding, padding_mode)``.

    Returns:
        cols: (N, C*kh*kw, OH*OW).
    """
    xp = namespace(x)
    c = x.shape[1]
    return xp.reshape(windows(pad(x, g), g), (batch_dim(x), c * g.window, g.oh * g.ow))


def col2im(cols, g: Geometry, input_shape):
    """Fold columns back onto an image, summing overlaps: the adjoint of :func:`im2col`.

    Args:
        cols: (N, C*kh*kw, OH*OW), e.g. the gradient of a loss with respect to ``im2col(x, g)``.
        g: the geometry ``im2col`` was called with.
        input_shape: (N, C, H, W) of the image ``im2col`` was applied to.

    Returns:
        (N, C, H, W) with ``<im2col(x, g), cols> == <x, col2im(cols, g, x.shape)>`` for every x.
    """
    n, c = input_shape[:2]
    return scatter_windows(namespace(cols).reshape(cols, (n, c, g.window, g.oh, g.ow)), g,
                           input_shape)


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
    """Adjoint of :func:`~.padding.pad` then :func:`windows`: (N, C, kh*kw, OH, OW) window gradients
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
    rows = xp.zeros((n, c, g.kw, hp, g.ow), dtype=dwin.dtype, device=device_of(dwin))
    for i in range(g.kh):
        rows = xpx.at(rows, (slice(None), slice(None), slice(None), g.rows_at(i), ...)).add(
            dwin[:, :, i, ...])
    buf = xp.zeros((n, c, hp, wp), dtype=dwin.dtype, device=device_of(dwin))
    for j in range(g.kw):
        buf = xpx.at(buf, (slice(None), slice(None), slice(None), g.cols_at(j))).add(
            rows[:, :, j, ...])
    return unpad(buf, g)
