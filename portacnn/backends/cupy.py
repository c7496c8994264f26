"""The CuPy backend: NVIDIA GPUs.

CuPy launches every operation on the *current* device, and array-api-compat ignores
``device=`` in CuPy's creation functions (only ``asarray`` honours it). So this backend makes
its device current (:meth:`CupyBackend.activate`) wherever portacnn computes, which is what
makes ``cuda:N`` work for every N.

Creating the backend imports CuPy through the install doctor (a machine without CuPy hears
first whether it has an NVIDIA GPU at all) and runs its smoke test
(:func:`.cupy_doctor.smoke_test`): a CuPy wheel without NVRTC or cuBLAS, a driver that is too old, or a missing device each become
a :class:`~.errors.DeviceError` that names the versions found and what to do.
"""

from __future__ import annotations

import array_api_compat

from ..kernels import GpuKernels
from .base import Backend
from .cupy_doctor import import_cupy, smoke_test, version_fields
from .memory import MemoryPeak
from .registry import register

__all__ = ["CupyBackend"]


@register
class CupyBackend(Backend):
    """CuPy arrays on CUDA device ``device`` (an int; default 0).

    A fit's data up to ``device_data_limit`` bytes (1 GiB: MNIST's 60,000 training images take
    188 MB in float32) moves to the GPU once, and batches are gathered there.
    """

    library = "cupy"
    aliases = ("gpu", "cuda")
    device_data_limit = 2**30
    accelerator = True
    kernels = GpuKernels()      # the portable set, pooling forward in fewer launches

    @classmethod
    def parse(cls, key: str):
        if key in ("gpu", "cuda", "cupy"):
            return True, None
        if key.startswith("cuda:") and key[5:].isdigit():
            return True, int(key[5:])
        return False, None

    @classmethod
    def create(cls, device=None) -> "CupyBackend":
        cupy = import_cupy()
        index = 0 if device is None else int(getattr(device, "id", device))
        smoke_test(cupy, index)
        dev = cupy.cuda.Device(index)
        with dev:
            xp = array_api_compat.array_namespace(cupy.empty(0))
        return cls(xp, dev, native=cupy)

    @staticmethod
    def array_to_numpy(x):
        """A CuPy array, on any device, copied to the host (``x.get()``)."""
        return x.get()

    def activate(self):
        return self.native.cuda.Device(self.device.id)

    @classmethod
    def for_local_rank(cls, local_rank: int) -> "CupyBackend":
        """Device ``local_rank % device count``: the count is read before any device is
        touched, so no process makes a context (and a memory pool) on another rank's GPU."""
        cupy = import_cupy()
        try:
            count = cupy.cuda.runtime.getDeviceCount()
        except Exception:  # noqa: BLE001 - the smoke test diagnoses it with the versions
            count = 0
        return cls.create(local_rank % count if count else 0)

    def use(self) -> None:
        self.native.cuda.Device(self.device.id).use()

    def synchronize(self) -> None:
        self.native.cuda.Device(self.device.id).synchronize()

    def memory_peak(self) -> MemoryPeak:
        """Peak bytes in use in CuPy's memory pool inside the block (above the level at its
        start), sampled at every allocation: memory use peaks right after an allocation."""
        return MemoryPeak(_PoolPeak(self.native, self.device.id))

    def device_info(self) -> dict:
        cupy = self.native
        info = {**super().device_info(), "cuda_device": self.device.id,
                **version_fields(cupy)}
        try:
            props = cupy.cuda.runtime.getDeviceProperties(self.device.id)
            name = props["name"]
            info.update(gpu=name.decode() if isinstance(name, bytes) else str(name),
                        compute_capability=f"{props['major']}.{props['minor']}",
                        memory_gib=round(props["totalGlobalMem"] / 2**30, 1))
        except Exception as exc:  # noqa: BLE001 - a report field, not a failure
            info["gpu"] = f"unknown ({type(exc).__name__}: {exc})"
        return info


class _PoolPeak:
    # Wraps CuPy's allocator for the duration of a block to record the pool's peak use.
    def __init__(self, cupy, device_id: int):
        self.cupy, self.device_id = cupy, device_id

    def start(self):
        cuda = self.cupy.cuda
        pool = self.cupy.get_default_memory_pool()
        get = getattr(cuda, "get_allocator", None)
        self.previous = get() if get is not None else pool.malloc
        with cuda.Device(self.device_id):
            cuda.Device(self.device_id).synchronize()
            self.base = self.peak = pool.used_bytes()

        def malloc(size):
            memory = self.previous(size)
            used = pool.used_bytes()
            if used > self.peak:
                self.peak = used
            return memory

        cuda.set_allocator(malloc)

    def stop(self):
        self.cupy.cuda.Device(self.device_id).synchronize()
        self.cupy.cuda.set_allocator(self.previous)
        return self.peak - self.base
