"""A fake ``cupy`` module: each way a CUDA machine fails on its first run, without a GPU.

``fake_cupy(...)`` builds a module shaped like ``cupy`` for the CuPy backend's smoke test; a
test puts it in ``sys.modules`` (``monkeypatch.setitem(sys.modules, "cupy", fake_cupy(...))``)
so that ``get_backend("gpu")`` imports it as it would the real one. ``INSUFFICIENT``,
``NO_NVRTC`` and ``NO_CUBLAS`` are the errors CuPy raises for an old driver, a missing NVRTC
and a missing cuBLAS.
"""

from __future__ import annotations

import types

import numpy as np


class CUDARuntimeError(RuntimeError):
    pass


class FakeArray:
    """Just enough of a CuPy array for the smoke test, failing where asked."""

    def __init__(self, a, fail_elementwise=None, fail_matmul=None):
        self.a, self.fe, self.fm = np.asarray(a), fail_elementwise, fail_matmul

    def _new(self, a):
        return FakeArray(a, self.fe, self.fm)

    def reshape(self, *shape):
        return self._new(self.a.reshape(*shape))

    @property
    def T(self):
        return self._new(self.a.T)

    def __mul__(self, other):
        if self.fe:
            raise self.fe
        return self._new(self.a * other)

    def sum(self):
        return self._new(self.a.sum())

    def __matmul__(self, other):
        if self.fm:
            raise self.fm
        return self._new(self.a @ other.a)

    def __getitem__(self, key):
        return self._new(self.a[key])

    def __float__(self):
        return float(self.a)


def fake_cupy(count=1, driver=12040, runtime=12090, count_error=None, elementwise=None,
              matmul=None):
    """A module shaped like ``cupy`` for the smoke test: ``count`` devices, the given driver
    and runtime versions (CUDA's integer form: 12040 is 12.4; a driver of 0 is none), and
    optional exceptions for getDeviceCount, the first elementwise op and the first matmul.
    ``touched`` lists each device index a ``Device`` was made for; ``current`` is the one
    ``Device.use()`` made current."""
    cupy = types.ModuleType("cupy")
    cupy.__version__ = "14.2.0"
    cupy.float32 = np.float32
    cupy.touched = []           # every device index a Device was made for, in order
    cupy.current = None         # the device Device.use() made current (None: none yet)

    def get_device_count():
        if count_error is not None:
            raise count_error
        return count

    class Device:
        def __init__(self, index=0):
            self.id = index
            cupy.touched.append(index)

        def use(self):
            cupy.current = self.id

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def synchronize(self):
            pass

    runtime_mod = types.SimpleNamespace(
        getDeviceCount=get_device_count, driverGetVersion=lambda: driver,
        runtimeGetVersion=lambda: runtime,
        getDeviceProperties=lambda i: {"name": b"Fake GPU", "major": 9, "minor": 0,
                                       "totalGlobalMem": 80 * 2**30})
    cupy.cuda = types.SimpleNamespace(runtime=runtime_mod, Device=Device,
                                      nvrtc=types.SimpleNamespace(getVersion=lambda: (12, 9)))
    cupy.empty = lambda shape, dtype=None: FakeArray(np.empty(shape, dtype=dtype))
    cupy.arange = lambda n, dtype=None: FakeArray(np.arange(n, dtype=dtype), elementwise, matmul)
    return cupy


INSUFFICIENT = CUDARuntimeError("cudaErrorInsufficientDriver: CUDA driver version is "
                                "insufficient for CUDA runtime version")
NO_NVRTC = RuntimeError('DynamicLibNotFoundError: Failure finding "libnvrtc.so.12": '
                        'libnvrtc.so.12: cannot open shared object file')
NO_CUBLAS = ImportError("libcublasLt.so.12: cannot open shared object file: No such file or "
                        "directory")
