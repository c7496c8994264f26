"""The CuPy backend's errors, on a fake ``cupy`` module (no GPU needed).

Each way a CUDA machine fails on its first run becomes a :class:`DeviceError` that names the
versions found (CuPy, CUDA driver, CUDA runtime) and what to do: no NVIDIA driver, a driver
older than CuPy's CUDA, no device, ``cuda:N`` beyond the devices present, NVRTC missing (the
first elementwise op), cuBLAS missing (the first matrix product). The fake is inserted into
``sys.modules`` for one test, so ``get_backend("gpu")`` imports it as it would the real one.
"""

from __future__ import annotations

import re
import sys

import pytest

from portacnn.backends import CupyBackend, DeviceError, NoDeviceError, get_backend
from portacnn.backends import cupy_doctor
from portacnn.backends.cupy_doctor import (check_libraries, cupy_distributions,
                                           nvidia_driver_signs, smoke_test)

from fake_cupy import (BUSY, DRIVER_MISMATCH, INSUFFICIENT, MIXED_INSTALL_ERROR, NO_CUBLAS,
                       NO_NVRTC, OUT_OF_MEMORY, POOL_OUT_OF_MEMORY, broken_cupy, fake_cupy)
from helpers import make_backend


@pytest.fixture
def install_fake(monkeypatch):
    def install(**kwargs):
        cupy = fake_cupy(**kwargs)
        monkeypatch.setitem(sys.modules, "cupy", cupy)
        return cupy

    return install


@pytest.mark.parametrize("spec,kwargs,expected", [
    ("gpu", dict(elementwise=NO_NVRTC),
     [r"NVRTC \(CuPy's kernel compiler\) is missing", r'pip install "portacnn\[gpu\]"',
      "libnvrtc.so.12"]),
    ("gpu", dict(runtime=13000, elementwise=NO_NVRTC),
     ["NVRTC", r'pip install "portacnn\[gpu-cuda13\]"']),
    ("gpu", dict(matmul=NO_CUBLAS),
     ["cuBLAS is missing", r'pip install "portacnn\[gpu\]"', "libcublasLt"]),
    ("gpu", dict(driver=12020, runtime=13000, count_error=INSUFFICIENT),
     ["cudaErrorInsufficientDriver", r"driver \(CUDA 12.2\) is older than this CuPy's CUDA "
      r"runtime \(13.0\)", "update the driver", r'pip install "portacnn\[gpu\]"']),
    ("gpu", dict(driver=0, count_error=INSUFFICIENT),
     ["no usable CUDA device", "no NVIDIA driver is installed", "device='cpu'"]),
    ("gpu", dict(count=0), ["found no CUDA device", "CUDA_VISIBLE_DEVICES", "device='cpu'"]),
    ("cuda:5", dict(count=2),
     ["cuda:5 does not exist", "2 CUDA device", "use cuda:0 to cuda:1"]),
], ids=["no-nvrtc", "no-nvrtc-cuda13", "no-cublas", "old-driver", "no-driver", "no-device",
        "cuda-n-out-of-range"])
def test_each_failure_is_a_device_error_with_the_versions_and_the_fix(install_fake, spec,
                                                                      kwargs, expected):
    install_fake(**kwargs)
    with pytest.raises(DeviceError) as info:
        get_backend(spec)
    message = str(info.value)
    assert "CuPy 14.2.0" in message and "CUDA driver" in message and "CUDA runtime" in message
    for pattern in expected:
        assert re.search(pattern, message), (pattern, message)


@pytest.mark.parametrize("kwargs", [dict(driver=0, count_error=INSUFFICIENT), dict(count=0)],
                         ids=["no-driver", "no-device"])
def test_no_gpu_at_all_is_told_apart_from_a_broken_one(install_fake, kwargs):
    install_fake(**kwargs)
    with pytest.raises(NoDeviceError):
        get_backend("gpu")
    install_fake(elementwise=NO_NVRTC)
    with pytest.raises(DeviceError) as info:
        get_backend("gpu")
    assert not isinstance(info.value, NoDeviceError)


@pytest.mark.parametrize("signs", [[], ["/proc/driver/nvidia"]], ids=["no-gpu", "gpu"])
def test_without_cupy_a_machine_with_no_gpu_is_told_so_before_any_install(monkeypatch, signs):
    """Installing CuPy (hundreds of MB) cannot help a machine without an NVIDIA GPU: it hears
    that first (NoDeviceError); a machine with one hears which extra to install."""
    monkeypatch.setitem(sys.modules, "cupy", None)          # importing cupy fails
    monkeypatch.setattr(cupy_doctor, "nvidia_driver_signs", lambda: signs)
    with pytest.raises(DeviceError) as info:
        get_backend("gpu")
    message = str(info.value)
    if signs:
        assert not isinstance(info.value, NoDeviceError)
        assert message.startswith("cupy is not installed: ") and "portacnn[gpu]" in message
    else:
        assert isinstance(info.value, NoDeviceError)
        assert message.startswith("this machine shows no NVIDIA GPU (no NVIDIA driver: "), message
        assert "installing CuPy cannot help" in message and "device='cpu'" in message


@pytest.mark.parametrize("spec,kwargs,expected", [
    ("gpu", dict(elementwise=OUT_OF_MEMORY),
     ["cudaErrorMemoryAllocation", "cuda:0 is out of memory", "nvidia-smi", "smaller batch"]),
    ("cuda:1", dict(count=2, matmul=POOL_OUT_OF_MEMORY),
     ["OutOfMemoryError: Out of memory allocating", "cuda:1 is out of memory", "cuda:0"]),
    ("gpu", dict(count=2, elementwise=BUSY),
     ["cudaErrorDevicesUnavailable", "cuda:0 is busy", "exclusive-process compute mode",
      "nvidia-smi -i 0 -c DEFAULT", "another device (cuda:1)"]),
    ("gpu", dict(count_error=DRIVER_MISMATCH),
     ["cudaErrorSystemDriverMismatch", "NVIDIA kernel module", "Driver/library version mismatch",
      "reboot"]),
], ids=["out-of-memory", "pool-out-of-memory", "busy-exclusive", "driver-mismatch"])
def test_a_full_busy_or_mismatched_gpu_is_not_told_to_install_anything(install_fake, spec,
                                                                       kwargs, expected):
    """Out of memory, a GPU held by another process in exclusive mode and a kernel module that
    does not match the driver's library have their own fixes: installing an extra fixes none."""
    install_fake(**kwargs)
    with pytest.raises(DeviceError) as info:
        get_backend(spec)
    message = str(info.value)
    assert not isinstance(info.value, NoDeviceError)
    assert "CuPy 14.2.0" in message and "pip install" not in message, message
    for pattern in expected:
        assert pattern in message, (pattern, message)


@pytest.mark.parametrize("installed", [["cupy-cuda12x", "cupy-cuda13x"], ["cupy-cuda12x"]],
                         ids=["two-cupys", "one-cupy"])
def test_a_cupy_that_fails_to_import_is_shown_not_called_missing(monkeypatch, tmp_path,
                                                                   installed):
    """An installed CuPy that cannot import (here two CuPy wheels in one environment, as after
    pip install ".[gpu]" where cupy-cuda13x was already there) shows CuPy's own diagnosis and
    what to uninstall, not "cupy is not installed"."""
    monkeypatch.syspath_prepend(str(broken_cupy(tmp_path)))
    monkeypatch.delitem(sys.modules, "cupy", raising=False)
    monkeypatch.setattr(cupy_doctor, "nvidia_driver_signs", lambda: ["/dev/nvidia0"])
    monkeypatch.setattr(cupy_doctor, "cupy_distributions", lambda: installed)
    with pytest.raises(DeviceError) as info:
        get_backend("gpu")
    message = str(info.value)
    assert not isinstance(info.value, NoDeviceError)
    assert "not installed" not in message
    assert message.startswith("CuPy is installed but fails to import: ")
    assert MIXED_INSTALL_ERROR in message
    if len(installed) > 1:
        assert "several CuPy packages are installed (cupy-cuda12x, cupy-cuda13x)" in message
        assert "pip uninstall -y cupy-cuda12x cupy-cuda13x" in message
        assert "multiple CuPy packages" in message          # CuPy's own warning, shown too
    else:
        assert "pip install --force-reinstall cupy-cuda12x" in message
    [row] = check_libraries()
    assert row["library"] == "CuPy" and not row["ok"] and MIXED_INSTALL_ERROR in row["detail"]
    assert "not installed" not in row["detail"]


def test_cupy_packages_are_read_from_the_installed_distributions(monkeypatch):
    import importlib.metadata
    import types

    names = ["numpy", "cupy-cuda13x", "cupy_cuda12x", "cupyx-tools", "Cupy", None]
    monkeypatch.setattr(importlib.metadata, "distributions", lambda: [
        types.SimpleNamespace(metadata={"Name": n} if n else {}) for n in names])
    assert cupy_distributions() == ["cupy", "cupy-cuda12x", "cupy-cuda13x"]


def test_the_gpu_extras_pin_cuda_libraries_cupy_14_documents():
    """CuPy 14's install guide lists the CUDA Toolkits it supports (12.0 to 12.9 but no 12.7,
    13.0 and 13.1); NVIDIA's wheels go further (cuda-toolkit 13.5 exists): the extras must not
    pull a CUDA minor CuPy does not document, nor a CuPy other than 14."""
    tomllib = pytest.importorskip("tomllib")
    from pathlib import Path

    from packaging.requirements import Requirement

    documented = {(12, m) for m in (0, 1, 2, 3, 4, 5, 6, 8, 9)} | {(13, 0), (13, 1)}
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    extras = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]
    for name in ("gpu", "gpu-cuda12", "gpu-cuda13"):
        reqs = {Requirement(r).name: Requirement(r) for r in extras[name]}
        [cupy] = [n for n in reqs if n.startswith("cupy-cuda")]
        major = int(cupy[len("cupy-cuda"):-1])
        assert not reqs[cupy].specifier.contains("15.0.0") and reqs[cupy].specifier.contains(
            "14.2.0"), (name, str(reqs[cupy]))
        allowed = {(major, m) for m in range(12)
                   if reqs["cuda-toolkit"].specifier.contains(f"{major}.{m}.0")}
        assert allowed and allowed <= documented, (name, sorted(allowed - documented))
        assert reqs["cuda-toolkit"].extras == {"cublas", "cudart", "nvrtc"}


def test_the_driver_is_found_by_its_files_its_tool_or_its_library(monkeypatch, tmp_path):
    import ctypes.util

    present = tmp_path / "nvidia"
    present.mkdir()
    libraries = {}
    monkeypatch.setattr(ctypes.util, "find_library", libraries.get)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert nvidia_driver_signs(paths=[str(tmp_path / "absent")]) == []
    assert nvidia_driver_signs(paths=[str(tmp_path / "absent"), str(present)]) == [str(present)]
    (tmp_path / "bin").mkdir()
    smi = tmp_path / "bin" / "nvidia-smi"
    smi.write_text("#!/bin/sh\n")
    smi.chmod(0o755)
    assert nvidia_driver_signs(paths=[]) == [str(smi)]
    smi.unlink()
    libraries.update(cuda="libcuda.so.1", nvcuda="nvcuda.dll")
    assert nvidia_driver_signs(paths=[]) in (["libcuda.so.1"], ["nvcuda.dll"])


def test_library_check_needs_no_gpu_and_names_what_is_missing(install_fake, monkeypatch):
    cupy = install_fake(driver=0)

    def no_nvrtc():
        raise NO_NVRTC

    cupy.cuda.nvrtc.getVersion = no_nvrtc
    monkeypatch.setitem(sys.modules, "cupy_backends.cuda.libs", None)   # importing fails
    rows = {row["library"]: row for row in check_libraries()}
    assert rows["CuPy"]["ok"] and rows["CUDA runtime"]["ok"]
    assert not rows["NVRTC"]["ok"] and "libnvrtc.so.12" in rows["NVRTC"]["detail"]
    assert 'pip install "portacnn[gpu]"' in rows["NVRTC"]["detail"]
    assert not rows["cuBLAS"]["ok"] and 'pip install "portacnn[gpu]"' in rows["cuBLAS"]["detail"]
    driver = rows["NVIDIA driver"]
    assert driver["ok"] is None and "none installed" in driver["detail"]


def _libs_package(monkeypatch, cupy14, cublas_loads=True):
    """``cupy_backends.cuda.libs`` as CuPy 13 ships it (a plain package: ``cublas`` is a
    submodule to import, linked against libcublas.so.N) or as CuPy 14 does (its
    ``__getattr__`` loads libcublas through cuda-pathfinder first, raising ImportError where it
    is missing)."""
    import types

    cublas = types.ModuleType("cupy_backends.cuda.libs.cublas")
    libs = types.ModuleType("cupy_backends.cuda.libs")
    libs.__path__ = []
    if cupy14:
        def getattr_(name):
            if name != "cublas":
                raise AttributeError(name)
            if not cublas_loads:
                raise ImportError('Failure finding "libcublas.so.12"')
            return cublas
        libs.__getattr__ = getattr_
    for name, module in (("cupy_backends", types.ModuleType("cupy_backends")),
                         ("cupy_backends.cuda", types.ModuleType("cupy_backends.cuda")),
                         ("cupy_backends.cuda.libs", libs)):
        module.__path__ = []
        monkeypatch.setitem(sys.modules, name, module)
    if cublas_loads:
        monkeypatch.setitem(sys.modules, "cupy_backends.cuda.libs.cublas", cublas)
    else:
        monkeypatch.setitem(sys.modules, "cupy_backends.cuda.libs.cublas", None)


@pytest.mark.parametrize("cupy14", [False, True], ids=["cupy13", "cupy14"])
def test_library_check_finds_cublas_on_cupy_13_and_14(install_fake, monkeypatch, cupy14):
    install_fake()
    _libs_package(monkeypatch, cupy14)
    rows = {row["library"]: row for row in check_libraries()}
    assert rows["cuBLAS"]["ok"], rows["cuBLAS"]
    _libs_package(monkeypatch, cupy14, cublas_loads=False)
    rows = {row["library"]: row for row in check_libraries()}
    assert not rows["cuBLAS"]["ok"] and "pip install" in rows["cuBLAS"]["detail"]


def test_library_check_without_cupy_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)          # importing cupy fails
    [row] = check_libraries()
    assert row["library"] == "CuPy" and not row["ok"] and "portacnn[gpu]" in row["detail"]


def test_a_working_device_passes_the_smoke_test():
    smoke_test(fake_cupy(count=2), 1)


def test_the_test_suite_skips_cupy_with_the_smoke_tests_reason(install_fake):
    install_fake(elementwise=NO_NVRTC)
    with pytest.raises(pytest.skip.Exception, match="NVRTC .* is missing"):
        make_backend("cupy")


def _backend_on(cupy, index=0):
    """A CupyBackend over a fake module, without running create (no real namespace)."""
    be = object.__new__(CupyBackend)
    be.native, be.device, be.name = cupy, cupy.cuda.Device(index), "cupy"
    return be


def test_device_info_names_the_gpu_driver_runtime_and_cupy():
    info = _backend_on(fake_cupy(driver=12040, runtime=12090), 1).device_info()
    assert info["gpu"] == "Fake GPU" and info["compute_capability"] == "9.0"
    assert (info["cupy"], info["cuda_driver"], info["cuda_runtime"], info["nvrtc"]) == (
        "14.2.0", "12.4", "12.9", "12.9")
    assert info["cuda_device"] == 1 and info["memory_gib"] == 80.0


def test_memory_peak_is_the_pools_highest_use_not_its_size_after():
    cupy = fake_cupy()

    class Pool:
        used = 1000

        def used_bytes(self):
            return self.used

        def malloc(self, size):
            self.used += size
            return size

    pool = Pool()
    cupy.get_default_memory_pool = lambda: pool
    allocator = {"fn": pool.malloc}
    cupy.cuda.get_allocator = lambda: allocator["fn"]
    cupy.cuda.set_allocator = lambda fn: allocator.update(fn=fn)
    be = _backend_on(cupy)
    with be.memory_peak() as peak:
        allocator["fn"](300)            # CuPy calls the allocator for each new array
        pool.used -= 300                # ... and frees it
        allocator["fn"](100)
    assert peak.bytes == 300
    assert allocator["fn"] == pool.malloc      # the allocator is restored


def test_a_library_path_is_read_from_the_process_maps_without_cuda_pathfinder(tmp_path):
    maps = tmp_path / "maps"
    maps.write_text(
        "7f00-7f01 r--p 00000000 08:01 1 /usr/local/cuda/lib64/libcublasLt.so.12.4.5.8\n"
        "7f01-7f02 r-xp 00000000 08:01 2 /usr/local/cuda/lib64/libcublas.so.12.4.5.8\n"
        "7f02-7f03 rw-p 00000000 00:00 0 \n")
    assert cupy_doctor._mapped_library("cublas", str(maps)) == \
        "/usr/local/cuda/lib64/libcublas.so.12.4.5.8"
    assert cupy_doctor._mapped_library("cublasLt", str(maps)).endswith("libcublasLt.so.12.4.5.8")
    assert cupy_doctor._mapped_library("nvrtc", str(maps)) is None
    assert cupy_doctor._mapped_library("cublas", str(tmp_path / "absent")) is None
