"""Elementwise activations and (log-)softmax, with their backward passes.

Backward functions take the upstream gradient and what the forward produced (the output for
tanh and sigmoid, whose derivatives are cheapest from it; the input for ReLU).
"""

from __future__ import annotations

from ..namespace import namespace

__all__ = ["relu", "relu_backward", "tanh", "tanh_backward", "sigmoid", "sigmoid_backward",
           "softmax", "log_softmax"]


def relu(x):
    """``max(x, 0)``: one ``clip`` with a Python bound, so no zero array is made (on a GPU,
    one launch instead of two); NaN stays NaN."""
    return namespace(x).clip(x, min=0)


def relu_backward(dy, x):
    """``dy * (x > 0)`` (the subgradient at 0 is taken as 0, as in PyTorch)."""
    return namespace(dy, x).where(x > 0, dy, 0.0)


def tanh(x):
    """Hyperbolic tangent."""
    return namespace(x).tanh(x)


def tanh_backward(dy, y):
    """``dy * (1 - y**2)`` where ``y = tanh(x)``."""
    return dy * (1 - y * y)


def sigmoid(x):
    """``1 / (1 + exp(-x))``, computed without overflow for large ``|x|``."""
    xp = namespace(x)
    e = xp.exp(-xp.abs(x))          # in (0, 1]: never overflows
    return xp.where(x >= 0, 1 / (1 + e), e / (1 + e))


def sigmoid_backward(dy, y):
    """``dy * y * (1 - y)`` where ``y = sigmoid(x)``."""
    return dy * y * (1 - y)


def log_softmax(x, axis: int = -1):
    """``x - logsumexp(x)`` along ``axis``, stable for large logits (max subtracted first)."""
    xp = namespace(x)
    shifted = x - xp.max(x, axis=axis, keepdims=True)
    return shifted - xp.log(xp.sum(xp.exp(shifted), axis=axis, keepdims=True))


def softmax(x, axis: int = -1):
    """``exp(x) / sum(exp(x))`` along ``axis``, stable for large logits."""
    xp = namespace(x)
    e = xp.exp(x - xp.max(x, axis=axis, keepdims=True))
    return e / xp.sum(e, axis=axis, keepdims=True)
