"""The CuPy install doctor: what is wrong with a CUDA machine, in words that say what to do.

* :func:`import_cupy` imports CuPy when a :class:`~.cupy.CupyBackend` is made; where it is
  missing it says first whether the machine shows an NVIDIA GPU at all
  (:func:`nvidia_driver_signs`), since installing CuPy cannot help a machine without one; where
  it is installed but fails to import (two CuPy wheels in one environment overwrite each other's
  files) it shows CuPy's own diagnosis and the CuPy packages found (:func:`cupy_distributions`).
* :func:`smoke_test` runs on device ``index`` when a :class:`~.cupy.CupyBackend` is made: an
  elementwise op, a reduction, a small matrix product. Each way a machine fails on its first
  run (no NVIDIA driver or no GPU, a driver older than CuPy's CUDA runtime, ``cuda:N`` beyond
  the devices present, NVRTC or cuBLAS missing, and a GPU that is there but cannot be used now:
  out of memory, busy in exclusive-process mode, a kernel module that does not match the
  driver's library) becomes a :class:`~.errors.DeviceError` that names the versions found and
  the fix.
* :func:`check_libraries` says, without a GPU, whether the libraries CuPy loads at run time
  are there (``scripts/gpu_check.py --libraries``).
* :func:`version_fields` reads CuPy's and CUDA's versions (also for benchmark reports).

The ``cupy`` module is passed in (or imported when asked), so a test can hand in a fake one.
"""

from __future__ import annotations

import ctypes.util
import importlib
import importlib.metadata
import os
import re
import shutil
import warnings

from .errors import DeviceError, NoDeviceError

__all__ = ["INSTALL_HINT", "import_cupy", "cupy_distributions", "nvidia_driver_signs",
           "smoke_test", "check_libraries", "version_fields"]

INSTALL_HINT = ('install the GPU extra that matches your driver: pip install "portacnn[gpu]" '
                '(CUDA 12 drivers, 525 or newer) or "portacnn[gpu-cuda13]" (CUDA 13 drivers, '
                '580 or newer)')


# Files an installed NVIDIA driver makes: its /proc entry and device nodes on Linux, WSL2's
# GPU device.
DRIVER_PATHS = ("/proc/driver/nvidia", "/dev/nvidiactl", "/dev/nvidia0", "/dev/dxg")


def nvidia_driver_signs(paths=DRIVER_PATHS) -> list[str]:
    """What on this machine shows an NVIDIA driver, and so possibly a GPU CuPy could use:
    those of ``paths`` that exist, ``nvidia-smi`` on the ``PATH``, and the driver's library
    (``libcuda``; ``nvcuda.dll`` on Windows) where the loader finds it. Empty: no driver, so no
    GPU to compute on."""
    signs = [path for path in paths if os.path.exists(path)]
    tool = shutil.which("nvidia-smi")
    if tool:
        signs.append(tool)
    library = ctypes.util.find_library("nvcuda" if os.name == "nt" else "cuda")
    if library:
        signs.append(library)
    return signs


def cupy_distributions() -> list[str]:
    """The CuPy packages installed in this environment (``cupy``, ``cupy-cuda12x``,
    ``cupy-cuda13x``, ``cupy-rocm-...``), sorted: more than one share the ``cupy`` folder and
    overwrite each other's files."""
    names = set()
    for dist in importlib.metadata.distributions():
        name = re.sub(r"[-_.]+", "-", (dist.metadata.get("Name") or "").lower())
        if re.fullmatch(r"cupy(-(cuda|rocm)[a-z0-9-]*)?", name):
            names.add(name)
    return sorted(names)


def _is_missing(exc: ImportError) -> bool:
    # Not installed (or hidden: None in sys.modules), as opposed to installed but failing to load.
    return isinstance(exc, ModuleNotFoundError) and exc.name == "cupy"


def _import_failure(exc: ImportError, warned: list[str]) -> str:
    """What to say when ``import cupy`` raised ``exc`` (after the warnings ``warned``)."""
    if _is_missing(exc):
        return f"cupy is not installed: {INSTALL_HINT}"
    text = " ".join(str(exc).split())
    seen = f" (CuPy warned: {' | '.join(warned)})" if warned else ""
    installed = cupy_distributions()
    if len(installed) > 1:
        fix = (f"several CuPy packages are installed ({', '.join(installed)}) and overwrite "
               f"each other's files: pip uninstall -y {' '.join(installed)}, then install one "
               "of them again (pip install --force-reinstall --no-deps <that one>, and "
               f"portacnn without a gpu extra: docs/gpu.md), or {INSTALL_HINT}")
    elif installed:
        fix = (f"CuPy's error says what failed; reinstall it: pip install --force-reinstall "
               f"{installed[0]}")
    else:
        fix = f"CuPy's error says what failed; reinstall CuPy, or {INSTALL_HINT}"
    return f"CuPy is installed but fails to import: {text}{seen}; {fix}"


def import_cupy():
    """The ``cupy`` module. Where it is missing, raise :class:`~.errors.NoDeviceError` when the
    machine shows no NVIDIA driver (:func:`nvidia_driver_signs`), as installing CuPy would not
    help, else :class:`~.errors.DeviceError` naming the extra to install. Where it is installed
    but fails to import, raise :class:`~.errors.DeviceError` with CuPy's own error and warnings
    and the CuPy packages found."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            cupy = importlib.import_module("cupy")
        except ImportError as exc:
            failure = exc
        else:
            failure = None
    if failure is None:
        for w in caught:            # a CuPy that imports keeps its warnings
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        return cupy
    if not _is_missing(failure):
        warned = [" ".join(str(w.message).split()) for w in caught]
        raise DeviceError(_import_failure(failure, warned)) from failure
    if not nvidia_driver_signs():
        raise NoDeviceError(
            "this machine shows no NVIDIA GPU (no NVIDIA driver: no /proc/driver/nvidia, "
            "no nvidia-smi, no libcuda), and CuPy computes only on one, so installing CuPy "
            "cannot help here: use device='cpu' (--device cpu). On a machine with an NVIDIA "
            f"GPU and its driver, {INSTALL_HINT}") from failure
    raise DeviceError(_import_failure(failure, [])) from failure


def smoke_test(cupy, index: int = 0) -> None:
    """Run an elementwise op, a reduction and a small matrix product on device ``index``;
    raise :class:`~.errors.DeviceError` with the versions found and the fix if any fails.

    The causes told apart: no NVIDIA driver or no GPU (:class:`~.errors.NoDeviceError`); a
    driver older than CuPy's CUDA runtime; ``cuda:N`` beyond the devices present; NVRTC
    (CuPy's kernel compiler) or cuBLAS missing; anything else the device raises.
    """
    fields = version_fields(cupy)
    versions = _versions(fields)
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # noqa: BLE001 - CUDARuntimeError carries the real reason
        raise _no_device_error(f"{type(exc).__name__}: {exc}", index, fields) from exc
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
        raise _compute_error(f"{type(exc).__name__}: {exc}", index, count, fields) from exc
    if total != 30.0 or corner != 50.0:
        raise DeviceError(f"CuPy computed wrong results on cuda:{index} ({versions}): "
                          f"sum {total} (expected 30), product {corner} (expected 50)")


def _state_fix(text: str, index: int, count: int | None = None) -> str | None:
    """The fix for a GPU that is there but cannot be used now, from CUDA's error name or
    message (CuPy's errors read ``cudaErrorName: message``); None for any other error. Out of
    memory (cudaErrorMemoryAllocation, or CuPy's memory pool's OutOfMemoryError), busy
    (cudaErrorDevicesUnavailable: exclusive-process mode and another process holds the GPU, or
    compute prohibited), and a kernel module that does not match the driver's user-space
    library (cudaErrorSystemDriverMismatch; NVML's "Driver/library version mismatch")."""
    low = text.lower()
    others = [f"cuda:{i}" for i in range(count or 0) if i != index]
    elsewhere = f", or use another device ({', '.join(others)})" if others else ""
    if "cudaErrorMemoryAllocation" in text or "OutOfMemoryError" in text or \
            "out of memory" in low:
        return (f"cuda:{index} is out of memory: other processes may hold its memory (nvidia-smi "
                "lists them and their use): end them, or train with a smaller batch "
                f"(--batch-size){elsewhere}")
    if "cudaErrorDevicesUnavailable" in text or "busy or unavailable" in low:
        return (f"cuda:{index} is busy: it is in exclusive-process compute mode and another "
                "process holds it, or its compute mode is Prohibited (nvidia-smi -q -d COMPUTE "
                "shows the mode, nvidia-smi the processes): wait for that process to end"
                f"{elsewhere}, or have an administrator allow sharing: nvidia-smi -i {index} "
                "-c DEFAULT")
    if "cudaErrorSystemDriverMismatch" in text or "version mismatch" in low:
        return ("the loaded NVIDIA kernel module and the driver's user-space library (libcuda) "
                "are different versions, as after a driver update without a reboot (nvidia-smi "
                "then says \"Failed to initialize NVML: Driver/library version mismatch\"): "
                "reboot, or unload and reload the nvidia kernel modules (sudo rmmod nvidia_uvm "
                "nvidia_drm nvidia_modeset nvidia && sudo modprobe nvidia)")
    return None


def _no_device_error(text: str, index: int, fields: dict) -> DeviceError:
    """The error for a failed device count: no driver, an old driver, a driver that does not
    match its kernel module, a busy device, no device, or other."""
    versions = _versions(fields)
    if fields["cuda_driver"] == "none":
        return NoDeviceError(f"CuPy cannot reach a GPU ({versions}): {text}; no usable CUDA "
                             "device: no NVIDIA driver is installed (no GPU?); use device='cpu'")
    state = _state_fix(text, index)
    if state is not None:
        return DeviceError(f"CuPy cannot reach a GPU ({versions}): {text}; {state}")
    if "InsufficientDriver" in text or "insufficient" in text.lower():
        fix = (f"the NVIDIA driver (CUDA {fields['cuda_driver']}) is older than this CuPy's "
               f"CUDA runtime ({fields['cuda_runtime']}): update the driver, or install the "
               f"CuPy built for the driver's CUDA: pip install "
               f"{_extra(_major(fields['cuda_driver']))}")
    elif "NoDevice" in text:
        return NoDeviceError(f"CuPy cannot reach a GPU ({versions}): {text}; no usable CUDA "
                             "device; use device='cpu'")
    else:
        fix = "no usable CUDA device (no GPU, or no NVIDIA driver): use device='cpu'"
    return DeviceError(f"CuPy cannot reach a GPU ({versions}): {text}; {fix}")


def _compute_error(text: str, index: int, count: int, fields: dict) -> DeviceError:
    """The error for a failed computation: out of memory, busy, a driver that does not match
    its kernel module, NVRTC missing, cuBLAS missing, or other."""
    extra = _extra(_major(fields["cuda_runtime"]))
    state = _state_fix(text, index, count)
    if state is not None:
        fix = state
    elif "nvrtc" in text.lower():
        fix = (f"NVRTC (CuPy's kernel compiler) is missing: pip install {extra} brings it "
               "with cuBLAS as NVIDIA wheels")
    elif "cublas" in text.lower():
        fix = f"cuBLAS is missing: pip install {extra} brings it with NVRTC as NVIDIA wheels"
    else:
        fix = INSTALL_HINT
    return DeviceError(f"CuPy cannot compute on cuda:{index} ({_versions(fields)}): {text}; "
                       f"{fix}")


def check_libraries() -> list[dict]:
    """Whether the libraries CuPy loads at run time are there, without using a GPU: one row
    ``{"library", "ok", "detail"}`` each for CuPy, the CUDA runtime, NVRTC, cuBLAS and (for
    information, ``ok`` None) the driver. ``detail`` names the version and file found, or the
    error and the fix."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            cupy = importlib.import_module("cupy")
        except ImportError as exc:
            warned = [" ".join(str(w.message).split()) for w in caught]
            return [{"library": "CuPy", "ok": False, "detail": _import_failure(exc, warned)}]
    fields = version_fields(cupy)
    extra = _extra(_major(fields["cuda_runtime"]))
    where = getattr(cupy, "__file__", None)
    rows = [{"library": "CuPy", "ok": True, "detail": f"{fields['cupy']} ({where})"}]

    def found(name):
        # The file cuda-pathfinder (CuPy 14's loader) resolves, where it is installed; else
        # (CuPy 13 links the libraries and the system loader finds them) the file mapped
        # into this process.
        try:
            pathfinder = importlib.import_module("cuda.pathfinder")
            return pathfinder.load_nvidia_dynamic_lib(name).abs_path
        except Exception as exc:  # noqa: BLE001 - a path is extra information
            return _mapped_library(name) or f"path unknown: {type(exc).__name__}"

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
        _load_cublas()
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


def _load_cublas():
    """CuPy's cuBLAS module, loaded as ``from cupy_backends.cuda.libs import cublas`` (what
    ``cupy.cuda.cublas`` runs) loads it. CuPy 14's package has a ``__getattr__`` that loads
    libcublas through cuda-pathfinder before the module (ImportError where it is missing); CuPy
    13's is a plain package whose ``cublas`` submodule links libcublas.so.N itself and is an
    attribute only once imported, so it is imported by name."""
    libs = importlib.import_module("cupy_backends.cuda.libs")
    try:
        return getattr(libs, "cublas")
    except AttributeError:
        return importlib.import_module("cupy_backends.cuda.libs.cublas")


def _mapped_library(name: str, maps: str = "/proc/self/maps") -> str | None:
    """The file of ``lib<name>.so...`` mapped into this process (Linux), or None."""
    try:
        with open(maps) as f:
            for line in f:
                path = line.split(maxsplit=5)[-1].strip()
                if os.path.basename(path).startswith(f"lib{name}.so"):
                    return path
    except OSError:
        pass
    return None


def version_fields(cupy) -> dict:
    """CuPy's version and the CUDA driver, runtime and NVRTC versions (None where unreadable;
    a driver version of ``"none"`` means no NVIDIA driver is installed)."""
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


def _cuda_version(v: int) -> str:
    # CUDA's integer form: 12040 -> "12.4".
    return f"{v // 1000}.{(v % 1000) // 10}"


def _versions(f: dict) -> str:
    """``"CuPy 14.2.0, CUDA driver 12.4, CUDA runtime 12.9"`` from :func:`version_fields`."""
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
