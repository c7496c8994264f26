"""The CuPy backend: NVIDIA GPUs.

CuPy launches every operation on the *current* device, and array-api-compat ignores
``device=`` in CuPy's creation functions (only ``asarray`` honours it). So this backend makes
its device current (:meth:`CupyBackend.activate`) wherever portacnn computes, which is what
makes ``cuda:N`` work for every N.

Creating the backend runs a smoke test (an elementwise op, a reduction, a small matrix product):
a CuPy wheel without NVRTC or cuBLAS, a driver that is too old, or a missing device each become
a :class:`~.base.DeviceError` that names the versions found and what to do.
"""

from __future__ import annotations

import array_api_compat

import importlib

from .base import Backend, DeviceError, MemoryPeak, NoDeviceError
from .registry import _import, register

__all__ = ["CupyBackend", "smoke_test", "check_libraries", "INSTALL_HINT"]

INSTALL_HINT = ('install the GPU extra that matches your driver: pip install "portacnn[gpu]" '
                '(CUDA 12 drivers, 525 or newer) or "portacnn[gpu-cuda13]" (CUDA 13 drivers, '
                '580 or newer)')


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

    def memory_peak(self) -> MemoryPeak:
        """Peak bytes in use in CuPy's memory pool inside the block (above the level at its
        start), sampled at every allocation: memory use peaks right after an allocation."""
        return MemoryPeak(_PoolPeak(self.native, self.device.id))

    def device_info(self) -> dict:
        cupy = self.native
        info = {**super().device_info(), "cuda_device": self.device.id,
                **_version_fields(cupy)}
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


def _cuda_version(v: int) -> str:
    return f"{v // 1000}.{(v % 1000) // 10}"


def _version_fields(cupy) -> dict:
    """CuPy's version and the CUDA driver, runtime and NVRTC versions (None where unreadable;
    a driver version of 0 means no NVIDIA driver is installed)."""
    fields = {"cupy": getattr(cupy, "__version__", None)}
    runtime = cupy.cuda.runtime
    for key, getter in (("cuda_driver", "driverGetVersion"), ("cuda_runtime", "runtimeGetVersion")):
        try:
            v = int(getattr(runtime, getter)())
            fields[key] = "none" if v == 0 else _cuda_version(v)
        except Exception:  # noqa: BLE001 - reported as unknown
            fields[key] = None
    try:
        fields["nvrtc"] = ".".join(map(str, cupy.cuda.nvrtc.getVersion()))
    except Exception:  # noqa: BLE001
        fields["nvrtc"] = None
    return fields


def _versions(f: dict) -> str:
    """``"CuPy 14.2.0, CUDA driver 12.4, CUDA runtime 12.9"`` from :func:`_version_fields`."""
    unknown = "unknown"
    return (f"CuPy {f['cupy']}, CUDA driver {f['cuda_driver'] or unknown}, "
            f"CUDA runtime {f['cuda_runtime'] or unknown}")


def _extra(cuda_major: int | None) -> str:
    """The pip extra for a CUDA major version (the driver's or the runtime's)."""
    return '"portacnn[gpu-cuda13]"' if cuda_major and cuda_major >= 13 else '"portacnn[gpu]"'


def _major(version: str | None) -> int | None:
    try:
        return int(version.split(".")[0])
    except (AttributeError, ValueError):
        return None


def smoke_test(cupy, index: int = 0) -> None:
    """Run an elementwise op, a reduction and a small matrix product on device ``index``;
    raise :class:`~.base.DeviceError` with the versions found and the fix if any fails.

    The causes told apart: no NVIDIA driver or no GPU; a driver older than CuPy's CUDA
    runtime; ``cuda:N`` beyond the devices present; NVRTC (CuPy's kernel compiler) or cuBLAS
    missing; anything else the device raises.
    """
    fields = _version_fields(cupy)
    versions = _versions(fields)
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # noqa: BLE001 - CUDARuntimeError carries the real reason
        text = str(exc)
        if fields["cuda_driver"] == "none":
            raise NoDeviceError(f"CuPy cannot reach a GPU ({versions}): {text}; no usable CUDA "
                                "device: no NVIDIA driver is installed (no GPU?); use "
                                "device='cpu'") from exc
        if "InsufficientDriver" in text or "insufficient" in text.lower():
            fix = (f"the NVIDIA driver (CUDA {fields['cuda_driver']}) is older than this CuPy's "
                   f"CUDA runtime ({fields['cuda_runtime']}): update the driver, or install the "
                   f"CuPy built for the driver's CUDA: pip install "
                   f"{_extra(_major(fields['cuda_driver']))}")
        elif "NoDevice" in text:
            raise NoDeviceError(f"CuPy cannot reach a GPU ({versions}): {text}; no usable "
                                "CUDA device; use device='cpu'") from exc
        else:
            fix = "no usable CUDA device (no GPU, or no NVIDIA driver): use device='cpu'"
        raise DeviceError(f"CuPy cannot reach a GPU ({versions}): {text}; {fix}") from exc
    if count == 0:
        raise NoDeviceError(f"CuPy found no CUDA device ({versions}): no usable CUDA device (is "
                          "CUDA_VISIBLE_DEVICES empty?); use device='cpu'")
    if not 0 <= index < count:
        raise DeviceError(f"cuda:{index} does not exist: this machine has {count} CUDA "
                          f"device(s) ({versions}); use cuda:0 to cuda:{count - 1}, or check "
                          "CUDA_VISIBLE_DEVICES")
    try:
        with cupy.cuda.Device(index):
            a = cupy.arange(6, dtype=cupy.float32).reshape(2, 3)
            total = float((a * 2).sum())
            product = a @ a.T
            cupy.cuda.Device(index).synchronize()
            corner = float(product[1, 1])
    except Exception as exc:  # noqa: BLE001
        text = f"{type(exc).__name__}: {exc}"
        extra = _extra(_major(fields["cuda_runtime"]))
        if "nvrtc" in text.lower():
            fix = (f"NVRTC (CuPy's kernel compiler) is missing: pip install {extra} brings it "
                   "with cuBLAS as NVIDIA wheels")
        elif "cublas" in text.lower():
            fix = f"cuBLAS is missing: pip install {extra} brings it with NVRTC as NVIDIA wheels"
        else:
            fix = INSTALL_HINT
        raise DeviceError(f"CuPy cannot compute on cuda:{index} ({versions}): {text}; "
                          f"{fix}") from exc
    if total != 30.0 or corner != 50.0:
        raise DeviceError(f"CuPy computed wrong results on cuda:{index} ({versions}): "
                          f"sum {total} (expected 30), product {corner} (expected 50)")


def check_libraries() -> list[dict]:
    """Whether the libraries CuPy loads at run time are there, without using a GPU: one row
    ``{"library", "ok", "detail"}`` each for CuPy, the CUDA runtime, NVRTC, cuBLAS and (for
    information, ``ok`` None) the driver. ``detail`` names the version and file found, or the
    error and the fix."""
    try:
        cupy = importlib.import_module("cupy")
    except ImportError as exc:
        return [{"library": "CuPy", "ok": False, "detail": f"{exc}; {INSTALL_HINT}"}]
    fields = _version_fields(cupy)
    extra = _extra(_major(fields["cuda_runtime"]))
    where = getattr(cupy, "__file__", None)
    rows = [{"library": "CuPy", "ok": True, "detail": f"{fields['cupy']} ({where})"}]

    def found(name):
        # The file cuda-pathfinder (CuPy 14's loader) resolves, where it is installed.
        try:
            pathfinder = importlib.import_module("cuda.pathfinder")
            return pathfinder.load_nvidia_dynamic_lib(name).abs_path
        except Exception as exc:  # noqa: BLE001 - a path is extra information
            return f"path unknown: {type(exc).__name__}"

    rows.append({"library": "CUDA runtime", "ok": fields["cuda_runtime"] is not None,
                 "detail": f"{fields['cuda_runtime']} ({found('cudart')})"})
    if fields["nvrtc"] is not None:
        rows.append({"library": "NVRTC", "ok": True,
                     "detail": f"{fields['nvrtc']} ({found('nvrtc')})"})
    else:
        try:
            cupy.cuda.nvrtc.getVersion()
            error = "unknown error"
        except Exception as exc:  # noqa: BLE001
            error = f"{type(exc).__name__}: {str(exc).strip()}"
        rows.append({"library": "NVRTC", "ok": False,
                     "detail": f"{error}; pip install {extra} brings it"})
    try:
        # As CuPy does: the package's __getattr__ loads libcublas before the module needing it.
        importlib.import_module("cupy_backends.cuda.libs").cublas  # noqa: B018
        rows.append({"library": "cuBLAS", "ok": True,
                     "detail": f"{found('cublas')}, {found('cublasLt')}"})
    except Exception as exc:  # noqa: BLE001
        rows.append({"library": "cuBLAS", "ok": False,
                     "detail": f"{type(exc).__name__}: {str(exc).strip()}; pip install {extra} "
                               "brings it"})
    driver = fields["cuda_driver"]
    rows.append({"library": "NVIDIA driver", "ok": None,
                 "detail": "none installed (needed to compute, not for this check)"
                 if driver == "none" else f"CUDA {driver}"})
    return rows
