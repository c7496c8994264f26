"""The NumPy backend: the CPU.

It selects the ``"cpu"`` kernel overrides (:mod:`portacnn.kernels.cpu`): faster array-API
versions of convolution and pooling for cache-sized CPU work, tested against the portable
kernels. Training batches run in chunks of ``train_chunk`` images and inference in chunks of
``infer_chunk``, so each chunk's working set stays in a CPU's L2 cache (see docs/performance.md).
"""

from __future__ import annotations

import array_api_compat
import numpy as np

from .base import Backend
from .registry import register

__all__ = ["NumpyBackend"]


@register
class NumpyBackend(Backend):
    """NumPy through ``array_api_compat.numpy``, on the host (``device="cpu"``)."""

    library = "numpy"
    aliases = ("cpu",)
    kernel_overrides = "cpu"
    train_chunk = 32
    infer_chunk = 128
    host_sync_is_free = True
    fuse_updates = False
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
