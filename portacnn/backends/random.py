"""Random numbers that are the same on every backend: :class:`PortableRNG`.

The array API standard has no random numbers, and each library's generator draws differently.
So portacnn draws on the host with NumPy and moves the draws to the device once: the same seed
gives the same weights and dropout masks on NumPy, CuPy, torch, JAX and array_api_strict.
"""

from __future__ import annotations

import numpy as np  # host side only: the draws are made here and moved to the device

__all__ = ["PortableRNG"]


class PortableRNG:
    """A seeded random generator whose draws are identical on every backend.

    Numbers are drawn on the host with ``numpy.random.Generator(PCG64(seed))`` and moved to the
    backend's device once with ``backend.asarray`` (see :meth:`~.base.Backend.rng`).
    """

    def __init__(self, backend, seed: int | None = None):
        self.backend = backend
        self.seed = seed
        self.host = np.random.default_rng(seed)

    def normal(self, shape, std: float = 1.0, dtype=None):
        """Normal(0, std) samples of ``shape`` on the backend's device."""
        return self.backend.asarray(self.host.normal(0.0, std, size=shape), dtype=dtype)

    def uniform(self, shape, low: float = 0.0, high: float = 1.0, dtype=None):
        """Uniform[low, high) samples of ``shape`` on the backend's device."""
        return self.backend.asarray(self.host.uniform(low, high, size=shape), dtype=dtype)

    def bernoulli(self, shape, keep: float, dtype):
        """A 0/1 mask of ``shape`` in ``dtype`` (ones with probability ``keep``), drawn in
        float32 on the host and moved once: the same mask on every backend."""
        draws = self.host.random(size=shape, dtype=np.float32)
        return self.backend.asarray(draws < np.float32(keep), dtype=dtype)

    def permutation(self, n: int) -> np.ndarray:
        """A permutation of ``range(n)`` as a host NumPy array (used to shuffle batches)."""
        return self.host.permutation(n)
