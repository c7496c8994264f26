"""Faster CPU versions of named kernels, selected by the NumPy backend (placeholder)."""

OVERRIDES: dict = {}
