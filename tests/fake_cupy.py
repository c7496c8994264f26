"""A fake ``cupy`` module: each way a CUDA machine fails on its first run, without a GPU.

``fake_cupy(...)`` builds a module shaped like ``cupy`` for the CuPy backend's smoke test; a
test puts it in ``sys.modules`` (``monkeypatch.setitem(sys.modules, "cupy", fake_cupy(...))``)
so that ``get_backend("gpu")`` imports it as it would the real one. ``INSUFFICIENT``,
``NO_NVRTC`` and ``NO_CUBLAS`` are the errors CuPy raises for an old driver, a missing NVRTC
and a missing cuBLAS; ``OUT_OF_MEMORY``, ``POOL_OUT_OF_MEMORY``, ``BUSY`` and
``DRIVER_MISMATCH`` those for a full GPU (the CUDA runtime's and CuPy's memory pool's), a GPU in
exclusive-process mode held by another process, and a kernel module that does not match the
driver's library. ``broken_cupy(folder)`` writes a ``cupy`` package that fails to import as a
mixed install does.
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


class OutOfMemoryError(MemoryError):
    """As ``cupy.cuda.memory.OutOfMemoryError``: the memory pool could not allocate."""


OUT_OF_MEMORY = CUDARuntimeError("cudaErrorMemoryAllocation: out of memory")
POOL_OUT_OF_MEMORY = OutOfMemoryError("Out of memory allocating 512 bytes (allocated so far: "
                                      "79,456,321,536 bytes).")
BUSY = CUDARuntimeError("cudaErrorDevicesUnavailable: CUDA-capable device(s) is/are busy or "
                        "unavailable")
DRIVER_MISMATCH = CUDARuntimeError("cudaErrorSystemDriverMismatch: system has unsupported "
                                   "display driver / cuda driver combination")

# What `import cupy` says when cupy-cuda12x and cupy-cuda13x share site-packages: the second
# wheel overwrote part of the first, so CuPy's core fails to load and CuPy says why.
MIXED_INSTALL_ERROR = ("CuPy failed to load libnvrtc.so.13: OSError: libnvrtc.so.13: cannot "
                       "open shared object file: No such file or directory")


def broken_cupy(folder):
    """Write a ``cupy`` package under ``folder`` whose import warns of several CuPy packages and
    then fails with CuPy's own diagnosis, as a mixed cupy-cuda12x / cupy-cuda13x install does;
    put ``folder`` on ``sys.path`` (``monkeypatch.syspath_prepend``) to import it."""
    package = folder / "cupy"
    package.mkdir()
    (package / "__init__.py").write_text(
        "import warnings\n"
        "warnings.warn('CuPy may not function correctly because multiple CuPy packages are '\n"
        "              'installed in your environment: cupy-cuda12x, cupy-cuda13x')\n"
        f"raise ImportError({MIXED_INSTALL_ERROR!r})\n")
    return folder


# --- a simulated GPU that trains: NumPy underneath, CuPy's device, pool and sync detection ----

class DeviceSynchronized(RuntimeError):
    """As ``cupyx.DeviceSynchronized``: a synchronisation while ``allow_synchronize(False)``."""


class SimulatedDevice:
    """A ``cupy.cuda.Device`` that NumPy's array API accepts (it equals ``"cpu"``): ``use()``
    and ``with`` make it the module's ``current`` device; ``synchronize()`` declares a
    synchronisation to the simulated ``cupyx``."""

    def __init__(self, cupy, index=0):
        self.cupy, self.id = cupy, index

    def __eq__(self, other):
        return other == "cpu" or (isinstance(other, SimulatedDevice) and other.id == self.id)

    def __hash__(self):
        return hash("cpu")

    def __str__(self):
        return "cpu"

    def __repr__(self):
        return f"<simulated CUDA Device {self.id}>"

    def use(self):
        self.cupy.current = self.id

    def __enter__(self):
        self._previous, self.cupy.current = self.cupy.current, self.id
        return self

    def __exit__(self, *exc):
        self.cupy.current = self._previous
        return False

    def synchronize(self):
        self.cupy.cupyx.declare_synchronize(f"Device({self.id}).synchronize()")


def simulated_gpu(count=1, used_bytes=None):
    """``(cupy, cupyx, make)``: a module shaped like ``cupy`` whose backends compute with
    NumPy, its ``cupyx`` (``allow_synchronize(False)`` makes a synchronisation raise
    ``DeviceSynchronized``, as CuPy's does) and ``make(index)``, a
    :class:`~portacnn.backends.CupyBackend` on simulated device ``index`` of ``count``. The
    memory pool's ``used_bytes()`` is ``used_bytes()`` (default: the bytes tracemalloc traces,
    which counts NumPy's buffers, from the first call on)."""
    import contextlib
    import tracemalloc

    import array_api_compat.numpy as xp

    from portacnn.backends import CupyBackend

    cupy = fake_cupy(count=count)
    cupyx = types.ModuleType("cupyx")
    cupyx.DeviceSynchronized = DeviceSynchronized
    cupyx.allowed = True

    @contextlib.contextmanager
    def allow_synchronize(allow):
        old, cupyx.allowed = cupyx.allowed, allow
        try:
            yield
        finally:
            cupyx.allowed = old

    def declare_synchronize(what):
        if not cupyx.allowed:
            raise DeviceSynchronized(f"Device synchronization was detected while disallowed "
                                     f"({what}).")

    cupyx.allow_synchronize, cupyx.declare_synchronize = allow_synchronize, declare_synchronize
    cupy.cupyx = cupyx

    def traced():
        if not tracemalloc.is_tracing():
            tracemalloc.start()
        return tracemalloc.get_traced_memory()[0]

    pool = types.SimpleNamespace(used_bytes=used_bytes or traced, free_all_blocks=lambda: None)
    cupy.get_default_memory_pool = lambda: pool
    cupy.cuda.Device = lambda index=0: SimulatedDevice(cupy, index)

    def make(index=0):
        backend = CupyBackend(xp, "cpu", native=cupy, name="cupy")
        backend.device = SimulatedDevice(cupy, index)
        return backend

    return cupy, cupyx, make
