"""Spatial padding of NCHW arrays and its adjoint.

``padding_mode`` is ``"zeros"`` (a constant: 0, or -inf for max pooling) or ``"replicate"`` (the
edge pixels repeated, as ``torch.nn.functional.pad(mode="replicate")``). The widths come from a
:class:`~.shapes.Geometry`::

    pad    (N, C, H, W)   -> (N, C, H + top + bottom, W + left + right)
    unpad  (N, C, Hp, Wp) -> (N, C, H, W)

:func:`unpad` is the adjoint of :func:`pad`: it crops for constant padding and, for replicate
padding, adds each padded row and column's gradient back onto the edge pixel it copied, so
``<pad(x), d> == <x, unpad(d)>`` for every x and d (with the constant 0).

Everything here is functional (no array is written after it is made), so it runs on JAX as on
NumPy: the standard's slices, ``broadcast_to`` and ``concat``, and array-api-extra's ``pad``
and ``at(...).add`` (in place on NumPy, CuPy and torch; a new array on JAX).
"""

from __future__ import annotations

import array_api_extra as xpx

from ..namespace import namespace
from .shapes import Geometry

__all__ = ["pad", "crop", "unpad", "kept_region", "unpad_kept"]


def pad(x, g: Geometry, value: float = 0.0):
    """Pad ``x`` (N, C, H, W) spatially by ``g``'s padding: ``value`` for ``"zeros"`` mode (the
    constant), the edge pixels for ``"replicate"``."""
    if not g.padded:
        return x
    if g.mode == "replicate":
        return _replicate(namespace(x), x, g)
    if None in x.shape:                 # a traced batch of unknown size (ndonnx's "N")
        return _constant_by_concat(namespace(x), x, g, value)
    widths = ((0, 0), (0, 0), (g.top, g.bottom), (g.left, g.right))
    return xpx.pad(x, widths, constant_values=value)


def _constant_by_concat(xp, x, g: Geometry, value: float):
    # Constant padding that needs no size: rows and columns of ``value`` made like a slice of
    # ``x`` and joined on, so a shape known only when the graph runs needs no eager number
    # (the reshape gives back the static sizes ndonnx's ``full_like`` forgets).
    def frame(x, before, after, axis):
        edge = x[(slice(None),) * axis + (slice(0, 1), ...)]
        edge = xp.reshape(xp.full_like(edge, value), (-1, *edge.shape[1:]))
        parts = [edge] * before + [x] + [edge] * after
        return xp.concat(parts, axis=axis) if len(parts) > 1 else x

    return frame(frame(x, g.left, g.right, 3), g.top, g.bottom, 2)


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


def kept_region(g: Geometry, h: int, w: int):
    """The padded rows and columns a backward pass must produce for an (H, W) input,
    ``(r0, rows, c0, cols)``: the input's own for constant padding (the border's gradient is
    dropped, so it need not be computed), all of them for replicate (the border's gradient is
    folded onto the edges by :func:`unpad_kept`)."""
    if g.mode == "replicate":
        hp, wp = g.padded_hw(h, w)
        return 0, hp, 0, wp
    return g.top, h, g.left, w


def unpad_kept(grad, g: Geometry):
    """A gradient over :func:`kept_region` to the input's (N, C, H, W): nothing to do for
    constant padding (the region is the input), :func:`unpad` for replicate."""
    return unpad(grad, g) if g.mode == "replicate" else grad


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
