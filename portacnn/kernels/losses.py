"""Losses, each returning ``(loss, dlogits)`` so training needs one call per batch.

The loss is a 0-d array on the input's device (no host sync); take ``float()`` of it only
when you need a Python number.
"""

from __future__ import annotations

from array_api_compat import device as device_of

from ..namespace import namespace
from .activations import log_softmax

__all__ = ["softmax_cross_entropy", "mse", "one_hot"]


def one_hot(labels, num_classes: int, dtype):
    """(N,) integer labels -> (N, num_classes) one-hot of ``dtype``."""
    xp = namespace(labels)
    classes = xp.arange(num_classes, device=device_of(labels))
    return xp.astype(labels[:, None] == classes, dtype)


def _targets(logits, labels):
    xp = namespace(logits, labels)
    if logits.ndim != 2:
        raise ValueError(f"logits must be 2-D (N, classes), got shape {tuple(logits.shape)}")
    n, k = logits.shape
    if labels.ndim == 1:
        if labels.shape[0] != n:
            raise ValueError(f"{labels.shape[0]} labels for a batch of {n} logits")
        if xp.isdtype(labels.dtype, "real floating"):
            raise TypeError("integer class labels expected (or one-hot rows of shape (N, K)), "
                            f"got floating labels of shape {tuple(labels.shape)}")
        return one_hot(labels, k, logits.dtype)
    if tuple(labels.shape) != (n, k):
        raise ValueError(f"one-hot labels must have shape {(n, k)}, got {tuple(labels.shape)}")
    return xp.astype(labels, logits.dtype)


def softmax_cross_entropy(logits, labels):
    """Mean cross-entropy of ``softmax(logits)`` against ``labels``.

    Args:
        logits: (N, K) raw scores.
        labels: (N,) integer class indices, or (N, K) one-hot / probability rows.

    Returns:
        ``(loss, dlogits)``: the mean over the batch (0-d) and its gradient
        ``(softmax(logits) - target) / N`` of shape (N, K).
    """
    xp = namespace(logits, labels)
    target = _targets(logits, labels)
    logp = log_softmax(logits, axis=1)
    n = logits.shape[0]
    loss = -xp.sum(target * logp) / n
    return loss, (xp.exp(logp) - target) / n


def mse(pred, target):
    """Mean squared error over every element: ``mean((pred - target)**2)``.

    Returns ``(loss, dpred)`` with ``dpred = 2 (pred - target) / pred.size``.
    """
    xp = namespace(pred, target)
    if tuple(pred.shape) != tuple(target.shape):
        raise ValueError(f"mse: prediction shape {tuple(pred.shape)} differs from target "
                         f"shape {tuple(target.shape)}")
    diff = pred - xp.astype(target, pred.dtype)
    size = 1
    for d in pred.shape:
        size *= d
    return xp.sum(diff * diff) / size, diff * (2 / size)
