"""From the loaders' uint8 images to what a model takes: normalisation and host batching."""

from __future__ import annotations

import numpy as np

from .mnist import MEAN, STD

__all__ = ["normalize", "batches"]


def normalize(images, mean=MEAN, std=STD, dtype="float32") -> np.ndarray:
    """uint8 images (N, H, W) or (N, C, H, W) -> float ``(x / 255 - mean) / std`` in NCHW.

    ``mean`` and ``std`` are numbers or one per channel (CIFAR-10's
    :data:`~.cifar10.CIFAR10_MEAN`); the defaults are MNIST's."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[:, None, :, :]
    if images.ndim != 4:
        raise ValueError(f"images must be (N, H, W) or (N, C, H, W), got shape {images.shape}")
    mean, std = (np.asarray(v, dtype=dtype) for v in (mean, std))
    if mean.ndim or std.ndim:
        if not mean.size == std.size == images.shape[1] or max(mean.ndim, std.ndim) > 1:
            raise ValueError(f"mean and std hold {mean.size} and {std.size} values for "
                             f"{images.shape[1]} channel(s): give one number or one per channel")
        mean, std = mean.reshape(-1, 1, 1), std.reshape(-1, 1, 1)
    return ((images.astype(dtype) / 255.0 - mean) / std).astype(dtype)


def batches(x, y, batch_size: int, *, shuffle: bool = True, seed: int | None = 0):
    """Yield ``(x_batch, y_batch)`` host slices; shuffled with a seeded generator if asked."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    n = len(x)
    if len(y) != n:
        raise ValueError(f"{n} samples but {len(y)} labels")
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        yield x[idx], y[idx]
