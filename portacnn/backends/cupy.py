"""The CuPy backend: NVIDIA GPUs.

CuPy launches every operation on the *current* device, and array-api-compat ignores
``device=`` in CuPy's creation functions (only ``asarray`` honours it). So this backend makes
its device current (:meth:`CupyBackend.activate`) wherever portacnn computes, which is what
makes ``cuda:N`` work for every N.

Creating the backend runs a smoke test (an elementwise op, a reduction, a small matrix product):
a CuPy wheel without NVRTC or cuBLAS, a driver that is too old, or a missing device each become
a :class:`~.base.DeviceError` that says what was found and what to do.
"""

from __future__ import annotations

import array_api_compat

from .base import Backend, DeviceError
from .registry import _import, register

__all__ = ["CupyBackend", "smoke_test"]

INSTALL_HINT = ('install the GPU extra that matches your driver: pip install "portacnn[gpu]" '
                '(CUDA 12) or "portacnn[gpu-cuda13]" (CUDA 13)')


@register
class CupyBackend(Backend):
    """CuPy arrays on CUDA device ``device`` (an int; default 0)."""

    library = "cupy"
    aliases = ("gpu", "cuda")

    @classmethod
    def parse(cls, key: str):
        if key in ("gpu", "cuda", "cupy"):
            return True, None
        if key.startswith("cuda:") and key[5:].isdigit():
            return True, int(key[5:])
        return False, None

    @classmethod
    def create(cls, device=None) -> "CupyBackend":
        cupy = _import("cupy", INSTALL_HINT)
        index = 0 if device is None else int(getattr(device, "id", device))
        smoke_test(cupy, index)
        dev = cupy.cuda.Device(index)
        with dev:
            xp = array_api_compat.array_namespace(cupy.empty(0))
        return cls(xp, dev, native=cupy)

    def activate(self):
        return self.native.cuda.Device(self.device.id)

    def for_local_rank(self, local_rank: int) -> "CupyBackend":
        return type(self).create(local_rank % self.native.cuda.runtime.getDeviceCount())

    def synchronize(self) -> None:
        self.native.cuda.Device(self.device.id).synchronize()


def _versions(cupy) -> str:
    parts = [f"CuPy {cupy.__version__}"]
    for label, getter in (("driver", "driverGetVersion"), ("runtime", "runtimeGetVersion")):
        try:
            v = getattr(cupy.cuda.runtime, getter)()
            parts.append(f"CUDA {label} {v // 1000}.{(v % 1000) // 10}")
        except Exception:  # noqa: BLE001 - the reason is reported by the caller
            parts.append(f"CUDA {label} unknown")
    return ", ".join(parts)


def smoke_test(cupy, index: int = 0) -> None:
    """Run an elementwise op, a reduction and a small matrix product on device ``index``;
    raise :class:`~.base.DeviceError` with the versions found and the fix if any fails."""
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # noqa: BLE001 - CUDARuntimeError carries the real reason
        text = str(exc)
        if "InsufficientDriver" in text or "insufficient" in text.lower():
            fix = ("the NVIDIA driver is older than this CuPy's CUDA: update the driver, or "
                   "install the extra for the driver's CUDA version")
        else:
            fix = "no usable CUDA device (no GPU, or no NVIDIA driver): use device='cpu'"
        raise DeviceError(f"CuPy cannot reach a GPU ({_versions(cupy)}): {text}; {fix}") from exc
    if not 0 <= index < count:
        raise DeviceError(f"cuda:{index} does not exist: this machine has {count} CUDA "
                          f"device(s) (cuda:0 to cuda:{count - 1})")
    try:
        with cupy.cuda.Device(index):
            a = cupy.arange(6, dtype=cupy.float32).reshape(2, 3)
            total = float((a * 2).sum())
            product = a @ a.T
            cupy.cuda.Device(index).synchronize()
    except Exception as exc:  # noqa: BLE001
        text = f"{type(exc).__name__}: {exc}"
        if "nvrtc" in text.lower():
            fix = "NVRTC (CuPy's kernel compiler) is missing: " + INSTALL_HINT
        elif "cublas" in text.lower():
            fix = "cuBLAS is missing: " + INSTALL_HINT
        else:
            fix = INSTALL_HINT
        raise DeviceError(f"CuPy cannot compute on cuda:{index} ({_versions(cupy)}): {text}; "
                          f"{fix}") from exc
    if total != 30.0 or float(product[1, 1]) != 50.0:
        raise DeviceError(f"CuPy computed wrong results on cuda:{index} ({_versions(cupy)})")
