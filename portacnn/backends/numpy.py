"""The NumPy backend: the CPU.

It runs the CPU kernel set (:class:`portacnn.kernels.CpuKernels`): faster array-API versions
of convolution and pooling for cache-sized CPU work, tested against the portable kernels, and
the chunk sizes and per-parameter updates that keep a CPU's working set in cache (see
docs/performance.md).
"""

from __future__ import annotations

import array_api_compat
import numpy as np

from ..kernels import CpuKernels
from .base import Backend
from .registry import register

__all__ = ["NumpyBackend"]


@register
class NumpyBackend(Backend):
    """NumPy through ``array_api_compat.numpy``, on the host (``device="cpu"``)."""

    library = "numpy"
    aliases = ("cpu",)
    kernels = CpuKernels()
    host_sync_is_free = True
    host_memory_traced = True

    @classmethod
    def parse(cls, key: str):
        return key in ("cpu", "numpy"), None

    @classmethod
    def create(cls, device=None) -> "NumpyBackend":
        if device not in (None, "cpu"):
            raise ValueError(f"NumPy arrays live on the host: device must be 'cpu', got {device!r}")
        return cls(array_api_compat.array_namespace(np.empty(0)), "cpu", native=np)

    def owns(self, x) -> bool:
        return type(x) is np.ndarray

    @staticmethod
    def array_to_numpy(x) -> np.ndarray:
        """NumPy arrays are host arrays already (a NumPy scalar becomes a 0-d array)."""
        return np.asarray(x)
