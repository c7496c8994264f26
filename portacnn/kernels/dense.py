"""Fully connected layer: ``y = x @ W^T + b``.

Shapes: x (N, in_features), weight (out_features, in_features) as in PyTorch, bias
(out_features,), y (N, out_features).
"""

from __future__ import annotations

from ..namespace import namespace

__all__ = ["dense_forward", "dense_backward"]


def dense_forward(x, weight, bias=None):
    """``x @ weight.T + bias``. Returns y (N, out_features)."""
    xp = namespace(x, weight) if bias is None else namespace(x, weight, bias)
    if x.ndim != 2:
        raise ValueError(
            f"dense input must be 2-D (N, features), got shape {tuple(x.shape)}; "
            "put a Flatten layer before Dense"
        )
    if weight.ndim != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(
            f"input has {x.shape[1]} features but the weight {tuple(weight.shape)} "
            f"expects {weight.shape[1] if weight.ndim == 2 else '?'}"
        )
    y = x @ xp.matrix_transpose(weight)
    if x.shape[0] is None:          # a traced batch: ndonnx's product forgets out_features
        y = xp.reshape(y, (-1, weight.shape[0]))
    return y if bias is None else y + bias


def dense_backward(dy, x, weight, need_dx: bool = True):
    """Gradients of :func:`dense_forward`: ``(dx, dweight, dbias)``.

    ``dweight = dy^T @ x``, ``dbias = sum_n dy``, ``dx = dy @ W`` (None if not ``need_dx``).
    """
    xp = namespace(dy, x, weight)
    dweight = xp.matrix_transpose(dy) @ x
    dbias = xp.sum(dy, axis=0)
    dx = dy @ weight if need_dx else None
    return dx, dweight, dbias
