"""Scalar arguments (sizes, counts, seeds, rates), checked one way everywhere.

A whole number is any :class:`numbers.Integral` (``int``, ``np.int64``, ``np.uint8``...) and a
real number any :class:`numbers.Real` (``float``, ``np.float32``, and the integers), ``bool``
excepted in both: sizes and rates computed with NumPy are as good as typed ones. Each check
returns a plain ``int`` / ``float``, so what a layer or optimizer stores stays JSON-able for
checkpoints.

    >>> positive_int(np.int64(10), "epochs")
    10
"""

from __future__ import annotations

import math
import numbers

__all__ = ["is_int", "is_real", "positive_int", "seed_or_none", "positive_real"]


def is_int(value) -> bool:
    """True for a whole number of any integer type (``bool`` is not one)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value) -> bool:
    """True for a real number of any numeric type, integers included (``bool`` is not one)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def positive_int(value, name: str) -> int:
    """``value`` as an ``int``; ``ValueError`` unless it is a whole number >= 1."""
    if not is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def seed_or_none(value, name: str = "seed") -> int | None:
    """``value`` as an ``int`` (or None); ``ValueError`` unless it is a whole number >= 0."""
    if value is None:
        return None
    if not is_int(value) or value < 0:
        raise ValueError(f"{name} must be an int >= 0 or None, got {value!r}")
    return int(value)


def positive_real(value, name: str) -> float:
    """``value`` as a ``float``; ``ValueError`` unless it is a finite real number > 0."""
    if not is_real(value) or not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)
