"""Data augmentation applied to each training batch where the batch lives (host or device).

An augmentation has two halves, so that every process of a data-parallel job augments its rows
of a batch exactly as one process would augment them:

- ``plan(rng, n) -> host array (n, k)``: the random choices for the ``n`` images of a whole
  batch, drawn on the host from a NumPy ``Generator``. ``fit`` draws one plan per batch from a
  generator seeded with ``(seed, epoch)``, on every process alike: the draws depend on neither
  the rank nor the backend, and differ between epochs.
- ``apply(x, plan) -> x'``: the array work on a batch ``x`` (N, C, H, W) with the plan's rows
  for those images, in the batch's own array-API namespace, with no loop over images. Each
  process applies the rows of the plan that belong to its shard of the batch.
"""

from __future__ import annotations

import array_api_compat
import array_api_extra as xpx
import numpy as np

from ..namespace import namespace
from ..scalars import is_int

__all__ = ["RandomCropFlip", "epoch_rng", "check_augmentation"]


class RandomCropFlip:
    """Random crop with zero padding and random horizontal flip, the CIFAR standard (He et
    al., 2016): each image (C, H, W) is padded with ``padding`` zeros on every side, an H x W
    window is cut at a random offset (each of the (2·padding + 1)² equally likely), and with
    probability 1/2 the window is mirrored left to right. Shapes are unchanged.

    ``padding=0`` only flips; ``flip=False`` only crops. Apply it before normalisation or after:
    the padding is zeros of the array given (the mean pixel, for data normalised to mean 0).

    A plan is an int64 array (n, 3): the row offset, the column offset (0 .. 2·padding) and
    the flip (0 or 1) of each image. ``apply`` pads the batch once and gathers every output
    pixel with one ``take`` from the padded batch; the indices are built from the plan's rows
    on the host and combined on the device: six operations per batch whatever its size (one
    upload, two additions, the padding's two, the take) and no read back.
    """

    def __init__(self, padding: int = 4, flip: bool = True):
        if not is_int(padding) or padding < 0:
            raise ValueError(f"padding must be an int >= 0, got {padding!r}")
        if not isinstance(flip, bool):
            raise TypeError(f"flip must be True or False, got {flip!r}")
        self.padding, self.flip = int(padding), flip

    def __repr__(self) -> str:
        return f"RandomCropFlip(padding={self.padding}, flip={self.flip})"

    def plan(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """The offsets and flips of ``n`` images: int64 (n, 3) drawn from ``rng``."""
        span = 2 * self.padding + 1
        return rng.integers(0, (span, span, 2 if self.flip else 1), size=(n, 3), dtype=np.int64)

    def apply(self, x, plan):
        """``x`` (N, C, H, W) cropped and flipped as ``plan`` (N, 3) says, on ``x``'s device."""
        if x.ndim != 4:
            raise ValueError(f"RandomCropFlip takes image batches (N, C, H, W), got shape "
                             f"{tuple(x.shape)}: give the model's input images")
        plan = np.asarray(plan)
        n, c, h, w = x.shape
        if plan.shape != (n, 3):
            raise ValueError(f"a plan for {n} images is ({n}, 3), got {plan.shape}")
        xp, p = namespace(x), self.padding
        if n == 0:
            return x
        hp, wp = h + 2 * p, w + 2 * p
        # Output pixel (k, r, s) of image i comes from (i, k, dy + r, dx + s) of the padded
        # batch, or (i, k, dy + r, dx + w - 1 - s) when flipped: flat offset
        # ((i·C + k)·Hp + dy + r)·Wp + column, the sum of a row, a channel and a column term
        # built here and uploaded as one array.
        rows = (np.arange(n)[:, None] * (c * hp) + plan[:, :1] + np.arange(h)) * wp  # (N, H)
        cols = np.arange(w)
        cols = plan[:, 1:2] + np.where(plan[:, 2:3] == 1, w - 1 - cols, cols)        # (N, W)
        terms = xp.asarray(np.concatenate([rows.ravel(), cols.ravel(), np.arange(c) * hp * wp]),
                           device=array_api_compat.device(x))
        index = (xp.reshape(terms[:n * h], (n, 1, h, 1))
                 + xp.reshape(terms[n * (h + w):], (1, c, 1, 1))
                 + xp.reshape(terms[n * h:n * (h + w)], (n, 1, 1, w)))             # (N, C, H, W)
        padded = xpx.pad(x, ((0, 0), (0, 0), (p, p), (p, p))) if p else x
        flat = xp.take(xp.reshape(padded, (-1,)), xp.reshape(index, (-1,)))
        return xp.reshape(flat, (n, c, h, w))


def epoch_rng(seed: int | None, epoch: int) -> np.random.Generator:
    """The generator of an epoch's augmentation plans: seeded with ``(seed, epoch)``, the same
    on every process and backend, another stream than the shuffling's (``seed`` alone);
    ``seed=None`` draws fresh entropy."""
    return np.random.default_rng(None if seed is None else [seed, epoch])


def check_augmentation(augment):
    """``augment`` if it is None or has ``plan(rng, n)`` and ``apply(x, plan)``."""
    if augment is not None and not (callable(getattr(augment, "plan", None))
                                    and callable(getattr(augment, "apply", None))):
        raise TypeError(f"augment must have plan(rng, n) and apply(x, plan), as "
                        f"portacnn.RandomCropFlip() has; got {augment!r}")
    return augment
