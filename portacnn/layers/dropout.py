"""Inverted dropout, :class:`Dropout`, with masks drawn from the portable RNG."""

from __future__ import annotations

from ..scalars import is_real, seed_or_none
from .base import Layer


class Dropout(Layer):
    """Inverted dropout: in training, zero each unit with probability ``p`` and scale the rest
    by ``1/(1-p)``; in eval mode, the identity.

    Masks are drawn from the portable RNG (float32 on the host, moved once in the working
    dtype), so a seeded run drops the same units on every backend.
    """

    _strict_shape = False
    samples_independent = False      # masks come from one draw per batch

    def __init__(self, p: float = 0.5, *, seed=None, dtype=None, name=None):
        super().__init__(dtype=dtype, name=name)
        if not (is_real(p) and 0.0 <= p < 1.0):
            raise ValueError(f"dropout probability p must be in [0, 1), got {p!r}")
        self.p = float(p)
        self.seed = seed_or_none(seed)
        self._rng = None

    def _build(self, input_shape, rng):
        self._rng = rng

    @property
    def rng(self):
        """The generator the masks are drawn from: the model's :class:`PortableRNG`, or the
        layer's own when it has a ``seed`` (anything with ``bernoulli(shape, keep, dtype)``
        may replace it: :mod:`portacnn.distributed` does, to draw whole-batch masks)."""
        if self._rng is None:
            self._rng = self.backend.rng(self.seed)
        return self._rng

    @rng.setter
    def rng(self, rng):
        self._rng = rng

    def to(self, device, dtype: str | None = None) -> "Dropout":
        super().to(device, dtype)
        if self._rng is not None and self.built:
            self._rng.backend = self.backend     # the same stream of masks, on the new device
        return self

    def _forward(self, x):
        if not self.training or self.p == 0.0:
            self._cache = "identity"
            return x
        mask = self.rng.bernoulli(tuple(x.shape), 1.0 - self.p, dtype=x.dtype)
        self._cache = mask
        return self.kernels.dropout_forward(x, mask, self.p)

    def _backward(self, dy):
        if isinstance(self._cache, str):
            return dy
        return self.kernels.dropout_backward(dy, self._cache, self.p)

    def describe(self):
        return f"p={self.p}"

    def get_config(self):
        return {"p": self.p, "seed": self.seed, **super().get_config()}
