"""Inverted dropout: zero each unit with probability p and scale the rest by 1/(1-p), so that
inference needs no rescaling (dropout is the identity in eval mode)."""

from __future__ import annotations

__all__ = ["dropout_forward", "dropout_backward"]


def dropout_forward(x, keep_mask, p: float):
    """``x * keep_mask / (1 - p)``; ``keep_mask`` has x's shape and dtype, ones where kept."""
    if p >= 1.0:
        return x * 0
    return x * keep_mask * (1.0 / (1.0 - p))


def dropout_backward(dy, keep_mask, p: float):
    """The same mask and scale applied to the upstream gradient."""
    return dropout_forward(dy, keep_mask, p)
