"""Backend selection: the only module in portacnn that knows which array libraries exist.

Everything else receives an array-API namespace (``xp``) from here, or infers it from its
inputs with :func:`namespace`, and never imports numpy or cupy to compute.

    >>> from portacnn.runtime import get_backend
    >>> be = get_backend("cpu")          # NumPy; "gpu" / "cuda:1" give CuPy
    >>> x = be.asarray([[1.0, 2.0]])     # on the backend's device
    >>> be.to_numpy(x * 2)
    array([[2., 4.]])

Device strings: ``"cpu"`` (NumPy), ``"gpu"`` / ``"cuda"`` / ``"cuda:N"`` (CuPy on device N), or a
namespace name for tests and advanced use: ``"numpy"``, ``"cupy"``, ``"torch"``,
``"array_api_strict"``. ``get_backend(None)`` reads ``$PORTACNN_DEVICE`` (default ``"cpu"``).
"""

from __future__ import annotations

import ctypes
import importlib
import os
import platform
import threading
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType
from typing import Any

import numpy as np  # host side only: random draws and conversions, never kernels
import array_api_compat

__all__ = [
    "Backend",
    "DeviceError",
    "backend_of",
    "is_host_array",
    "to_numpy",
    "PortableRNG",
    "get_backend",
    "keep_freed_memory",
    "namespace",
    "VALID_DEVICES",
]

VALID_DEVICES = ("cpu", "gpu", "cuda", "cuda:N", "numpy", "cupy", "torch", "array_api_strict")
ENV_VAR = "PORTACNN_DEVICE"


class DeviceError(RuntimeError):
    """A device was asked for that cannot be used here (unknown name, missing library, no GPU)."""


class PortableRNG:
    """A seeded random generator whose draws are identical on every backend.

    Numbers are drawn on the host with ``numpy.random.Generator(PCG64(seed))`` and moved to the
    backend's device once, so the same seed gives the same weights on NumPy, CuPy, torch and
    array_api_strict (the standard itself has no random numbers).
    """

    def __init__(self, backend: "Backend", seed: int | None = None):
        self.backend = backend
        self.seed = seed
        self.host = np.random.default_rng(seed)

    def normal(self, shape, std: float = 1.0, dtype=None):
        """Normal(0, std) samples of ``shape`` on the backend's device."""
        return self.backend.asarray(self.host.normal(0.0, std, size=shape), dtype=dtype)

    def uniform(self, shape, low: float = 0.0, high: float = 1.0, dtype=None):
        """Uniform[low, high) samples of ``shape`` on the backend's device."""
        return self.backend.asarray(self.host.uniform(low, high, size=shape), dtype=dtype)

    def permutation(self, n: int) -> np.ndarray:
        """A permutation of ``range(n)`` as a host NumPy array (used to shuffle batches)."""
        return self.host.permutation(n)


class Backend:
    """An array-API namespace and a device, with the few helpers portacnn needs.

    Attributes:
        name: ``"numpy"``, ``"cupy"``, ``"torch"``, ``"array_api_strict"`` or the module name.
        xp: the array-API-compatible namespace (``array_api_compat.numpy`` for NumPy).
        device: the device arrays are created on (``"cpu"`` for NumPy, a ``cupy.cuda.Device``...).
        workers: how many workers ``Sequential`` shares a batch among, helper processes where
            :attr:`helper_processes` allows, else host threads (:meth:`parallel_map`); 1 runs
            everything in the caller. :meth:`limit_threads` sets it on the NumPy backend; any
            backend accepts it.
    """

    def __init__(self, name: str, xp: ModuleType, device: Any, native: ModuleType | None = None):
        self.name = name
        self.xp = xp
        self.device = device
        self._native = native
        self._array_type = type(xp.empty(0, device=device))
        self._one_device = name == "numpy"
        self.workers = 1

    def __repr__(self) -> str:
        return f"Backend(name={self.name!r}, device={self.device!r})"

    def __eq__(self, other) -> bool:
        return (
            isinstance(other, Backend)
            and other.xp is self.xp
            and str(other.device) == str(self.device)
        )

    def __hash__(self) -> int:
        return hash((self.name, str(self.device)))

    @property
    def description(self) -> str:
        """A one-line human description, e.g. ``"numpy 2.1.0 on cpu"``."""
        version = getattr(self._native, "__version__", "") if self._native else ""
        return f"{self.name} {version} on {self.device}".replace("  ", " ")

    def dtype(self, dtype):
        """Resolve ``"float32"`` / ``"float64"`` (or a dtype of this namespace) to a dtype."""
        if isinstance(dtype, str):
            if dtype not in ("float32", "float64"):
                raise ValueError(f"unsupported dtype {dtype!r}: use 'float32' or 'float64'")
            return getattr(self.xp, dtype)
        return dtype

    @property
    def host_sync_is_free(self) -> bool:
        """True where reading a scalar back (``float(x)``) does not stall a device queue."""
        return self.name in ("numpy", "array_api_strict") or (
            self.name == "torch" and getattr(self.device, "type", "cpu") == "cpu")

    @property
    def helper_processes(self) -> bool:
        """True where ``Sequential`` shares a batch among :attr:`workers` processes rather
        than threads: the NumPy backend on Linux (see :mod:`portacnn.helpers`), unless
        ``PORTACNN_HELPER_PROCESSES=0``. Processes do not queue for one GIL: a LeNet-5 step
        at batch 64 on 2 cores ran 11-31% faster with a helper process than with two threads
        (four interleaved runs)."""
        from . import helpers

        return self.name == "numpy" and helpers.available()

    @property
    def max_chunk(self) -> int | None:
        """Most images one forward pass (``evaluate``, ``predict``) should take at once, or
        None for no limit.

        On the CPU a larger chunk's working set falls out of cache: LeNet-5 inference
        (NumPy, 1 thread, predict at batch 256) ran 7-12% faster in chunks of 128 than of
        64, and ~20% slower in chunks of 256 or of 32. GPUs prefer large batches and get no
        limit.
        """
        return None if self._on_gpu else 128

    @property
    def max_train_chunk(self) -> int | None:
        """Most images one forward+backward pass should take at once, or None for no limit.

        Training keeps every layer's cache alive until the backward pass, so its chunks are
        smaller: a LeNet-5 step at batch 64 ran 11-18% faster as two chunks of 32 than whole
        (NumPy, 1 thread; the im2col columns then fit the 2 MiB L2 cache).
        """
        return None if self._on_gpu else 32

    @property
    def _on_gpu(self) -> bool:
        return self.name == "cupy" or (
            self.name == "torch" and getattr(self.device, "type", "cpu") != "cpu")

    def check(self, x, what: str = "the input") -> None:
        """Raise ``TypeError`` unless ``x`` is an array of this backend on its device.

        The message names both sides and how to move the array, e.g. "the model is on cupy
        (cuda:0) but the input is a numpy array on cpu: pass it through model.backend.asarray".
        """
        if type(x) is self._array_type and (self._one_device or str(x.device) == str(self.device)):
            return
        if not self.owns(x):
            raise TypeError(
                f"{what} is a {_describe(x)} but the model is on {self.name} ({self.device}): "
                "move it with model.backend.asarray(x) (or portacnn.get_backend(...).asarray)"
            )

    def owns(self, x) -> bool:
        """True if ``x`` is an array of this backend's namespace on its device."""
        try:
            xp = array_api_compat.array_namespace(x)
        except TypeError:
            return False
        return xp is self.xp and str(array_api_compat.device(x)) == str(self.device)

    def asarray(self, x, dtype=None):
        """Return ``x`` (a host array, list, or an array of any backend) on this device.

        ``dtype`` may be a string (``"float32"``) or a dtype of this namespace. Arrays already
        on this backend are returned without a copy when the dtype matches.
        """
        dtype = self.dtype(dtype) if dtype is not None else None
        if not self.owns(x) and _is_foreign_array(x):
            x = to_numpy(x)
        return self.xp.asarray(x, dtype=dtype, device=self.device)

    def to_numpy(self, x) -> np.ndarray:
        """Copy an array of any backend to a host NumPy array."""
        return to_numpy(x)

    def synchronize(self) -> None:
        """Wait until queued device work is finished (a no-op on the CPU). Use before timing."""
        if self.name == "cupy":
            self._native.cuda.Device(self.device.id).synchronize()
        elif self.name == "torch" and getattr(self.device, "type", "cpu") == "cuda":
            self._native.cuda.synchronize(self.device)

    def limit_threads(self, threads: int | None):
        """Context manager capping the CPU threads this backend computes with (BLAS via
        threadpoolctl; torch's intra-op pool). ``None`` leaves them alone.

        On the NumPy backend it also sets :attr:`workers` to ``threads``: NumPy runs only
        matrix products on several cores, so ``Sequential`` instead splits each batch among
        ``threads`` workers (helper processes, see :attr:`helper_processes`, else host
        threads, see :meth:`parallel_map`). On a busy 2-core machine,
        OpenBLAS with 2 threads can run LeNet's skinny matrix products orders of magnitude
        slower than with 1; benchmarks compare at equal counts.
        """
        return _ThreadLimit(self, threads)

    def parallel_map(self, fn, items) -> list:
        """``[fn(item) for item in items]``, run on up to :attr:`workers` host threads.

        For independent pieces of work on this backend (``Sequential`` gives each thread its
        own chunks of a batch where it cannot use helper processes). While they run, BLAS is held at one thread per caller so the
        threads do not oversubscribe the cores. Results come back in the order of ``items``;
        the first exception raised is re-raised once every piece has finished.

        NumPy releases the GIL inside its loops and BLAS, so the threads overlap everything
        but the Python glue: a LeNet-5 epoch at batch 64 took 7.2 s on 2 threads against
        9.6 s on one (2 cores, each thread with single-threaded OpenBLAS). The glue still
        queues for the GIL, which is why pieces of fewer than ~32 images do not pay.
        """
        items = list(items)
        if self.workers <= 1 or len(items) <= 1 or getattr(_IN_POOL, "active", False):
            return [fn(item) for item in items]  # nested calls run in place: no deadlock
        pool = _executor(self.workers - 1)
        with single_threaded_blas():
            futures = [pool.submit(_in_pool, fn, item) for item in items[1:]]
            try:
                first = fn(items[0])             # the caller's thread takes a share too
            finally:
                done = [_outcome(f) for f in futures]
        for ok, value in done:
            if not ok:
                raise value
        return [first] + [value for _, value in done]

    def thread_info(self) -> dict:
        """The thread count of each CPU pool in use, portacnn's own :attr:`workers` and what
        they are (``"processes"`` or ``"threads"``, see :attr:`helper_processes`), e.g.
        ``{"openblas": 1, "workers": 2, "workers_are": "processes"}``."""
        from threadpoolctl import threadpool_info

        info = {pool["internal_api"]: pool["num_threads"] for pool in threadpool_info()}
        if self.name == "torch":
            info["torch"] = self._native.get_num_threads()
        info["workers"] = self.workers
        info["workers_are"] = "processes" if self.helper_processes else "threads"
        return info

    def rng(self, seed: int | None = None) -> PortableRNG:
        """A :class:`PortableRNG` seeded with ``seed`` drawing onto this backend."""
        return PortableRNG(self, seed)


class _ThreadLimit:
    def __init__(self, backend: Backend, threads: int | None):
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be a positive int or None, got {threads!r}")
        self.backend, self.threads = backend, threads
        self._limits = self._torch_before = self._workers_before = None

    def __enter__(self):
        if self.threads is None:
            return self
        from threadpoolctl import threadpool_limits

        self._limits = threadpool_limits(limits=self.threads)
        if self.backend.name == "torch":
            self._torch_before = self.backend._native.get_num_threads()
            self.backend._native.set_num_threads(self.threads)
        if self.backend.name == "numpy":
            self._workers_before = self.backend.workers
            self.backend.workers = self.threads
        return self

    def __exit__(self, *exc):
        if self._limits is not None:
            self._limits.restore_original_limits()
        if self._torch_before is not None:
            self.backend._native.set_num_threads(self._torch_before)
        if self._workers_before is not None:
            self.backend.workers = self._workers_before
        return False


_POOL: ThreadPoolExecutor | None = None
_IN_POOL = threading.local()
_POOL_LOCK = threading.Lock()
_BLAS_CONTROLLER = None


def _executor(threads: int) -> ThreadPoolExecutor:
    """One process-wide pool of helper threads, grown when more are asked for."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL._max_workers < threads:
            if _POOL is not None:
                _POOL.shutdown(wait=True)
            _POOL = ThreadPoolExecutor(threads, thread_name_prefix="portacnn")
        return _POOL


def single_threaded_blas():
    """Context manager holding BLAS at one thread, for code that shares the cores among
    workers of its own (threads or helper processes)."""
    # A controller made once: threadpool_limits() rescans the loaded libraries (~240 us),
    # limiting through a kept controller costs ~20 us, small against a training step.
    global _BLAS_CONTROLLER
    if _BLAS_CONTROLLER is None:
        from threadpoolctl import ThreadpoolController

        _BLAS_CONTROLLER = ThreadpoolController()
    return _BLAS_CONTROLLER.limit(limits=1, user_api="blas")


def _in_pool(fn, item):
    _IN_POOL.active = True
    return fn(item)


def _outcome(future):
    try:
        return True, future.result()
    except BaseException as exc:  # re-raised by the caller after every piece has finished
        return False, exc


def backend_of(x) -> Backend:
    """The :class:`Backend` an existing array lives on (its namespace and device)."""
    xp = namespace(x)
    name = _short_name(xp).split(".")[0]
    if name == "cupy":
        return _cupy_backend(x.device.id)
    if name not in ("numpy", "torch", "array_api_strict"):
        return Backend(name, xp, array_api_compat.device(x))
    return _namespace_backend(name, None if name == "numpy" else array_api_compat.device(x))


def is_host_array(x) -> bool:
    """True for a host NumPy array (data a model moves to its device batch by batch)."""
    return isinstance(x, np.ndarray)


def _is_foreign_array(x) -> bool:
    return not isinstance(x, (list, tuple, int, float)) and (
        hasattr(x, "__array_namespace__") or array_api_compat.is_array_api_obj(x)
    )


def to_numpy(x) -> np.ndarray:
    """Copy an array of any supported backend (or a Python sequence) to host NumPy."""
    if isinstance(x, np.ndarray):
        return x
    if array_api_compat.is_cupy_array(x):
        return x.get()
    if array_api_compat.is_torch_array(x):
        return x.detach().cpu().numpy()
    if hasattr(x, "__dlpack__"):
        return np.from_dlpack(x)
    return np.asarray(x)


# For these libraries the namespace depends only on the array's type, so it is looked up once
# per type: array_namespace costs ~15 us a call, and kernels call this dozens of times a step.
_CACHEABLE = ("numpy", "cupy", "torch", "array_api_strict")
_NAMESPACE_BY_TYPE: dict = {}


def namespace(*arrays):
    """The array-API namespace of ``arrays``, with an error that says how to fix mixed inputs.

    Kernels call this to infer ``xp`` from their inputs. Arrays from two libraries (a NumPy
    batch and CuPy weights) or on two devices raise a ``TypeError`` that names both.
    """
    kind = type(arrays[0])
    xp = _NAMESPACE_BY_TYPE.get(kind)
    if xp is not None and all(type(a) is kind for a in arrays):
        if kind is np.ndarray:
            return xp                                   # NumPy has a single device
        device = arrays[0].device
        if all(a.device == device for a in arrays):
            return xp
    try:
        xp = array_api_compat.array_namespace(*arrays)
    except TypeError as exc:
        kinds = sorted({_describe(a) for a in arrays if a is not None})
        raise TypeError(
            f"arrays from different libraries were mixed ({' and '.join(kinds)}); "
            "move them to one backend first, e.g. with model.backend.asarray(x)"
        ) from exc
    devices = {str(array_api_compat.device(a)) for a in arrays if a is not None}
    if len(devices) > 1:
        raise TypeError(
            f"arrays on different devices were mixed ({', '.join(sorted(devices))}); "
            "move them to one device first, e.g. with model.backend.asarray(x)"
        )
    if len({type(a) for a in arrays}) == 1 and _short_name(xp).split(".")[0] in _CACHEABLE:
        _NAMESPACE_BY_TYPE[kind] = xp
    return xp


def _describe(x) -> str:
    try:
        xp = array_api_compat.array_namespace(x)
    except TypeError:
        return type(x).__name__
    return f"{_short_name(xp)} array on {array_api_compat.device(x)}"


def _short_name(xp) -> str:
    name = xp.__name__
    return name.removeprefix("array_api_compat.")


def describe_array(x) -> str:
    """``"numpy array on cpu"`` style description of an array, for error messages."""
    return _describe(x)


def _import(module: str, install_hint: str):
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise DeviceError(f"{module} is not installed: {install_hint}") from exc


def _cupy_backend(index: int) -> Backend:
    cupy = _import("cupy", 'install the GPU extra with pip install "portacnn[gpu]" (CUDA 12)')
    try:
        available = cupy.cuda.is_available()
        count = cupy.cuda.runtime.getDeviceCount() if available else 0
    except Exception:  # a missing driver raises CUDARuntimeError here
        available, count = False, 0
    if not available or count == 0:
        raise DeviceError(
            "CuPy is installed but no usable CUDA device was found (no GPU, or no NVIDIA "
            "driver): use device='cpu', or run on a machine with a CUDA GPU"
        )
    if not 0 <= index < count:
        raise DeviceError(f"cuda:{index} does not exist: this machine has {count} CUDA device(s)")
    device = cupy.cuda.Device(index)
    with device:
        xp = array_api_compat.array_namespace(cupy.empty(0))
    return Backend("cupy", xp, device, native=cupy)


def keep_freed_memory() -> bool:
    """Let glibc's allocator keep freed blocks of up to 32 MiB for reuse (called once when a
    NumPy backend is made; ``$PORTACNN_KEEP_FREED_MEMORY=0`` turns it off).

    A training step allocates and frees the same few MB-sized arrays every batch. By default
    glibc hands blocks that large back to the kernel on ``free`` and gets fresh zeroed pages
    on the next ``malloc``: ~230 page faults and ~0.8 ms of kernel time per LeNet-5 step at
    batch 64 when this was added (~100-300 with today's smaller convolution buffers), and
    with two threads faulting at once they also queue on the process's memory lock (an epoch
    on 2 threads ran 1.35-1.4x faster with the blocks kept). The cost: the
    process keeps up to 256 MiB of freed memory instead of returning it at once. Returns True
    if the setting was applied (glibc only; elsewhere nothing changes).
    """
    global _FREED_MEMORY_KEPT
    if _FREED_MEMORY_KEPT is not None:
        return _FREED_MEMORY_KEPT
    _FREED_MEMORY_KEPT = False
    if os.environ.get("PORTACNN_KEEP_FREED_MEMORY", "1") != "0" and \
            platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        try:
            mallopt = ctypes.CDLL(None).mallopt
        except (OSError, AttributeError):
            return False
        m_trim_threshold, m_mmap_threshold = -1, -3          # from glibc's malloc.h
        _FREED_MEMORY_KEPT = bool(mallopt(m_mmap_threshold, 32 << 20)) and \
            bool(mallopt(m_trim_threshold, 256 << 20))
    return _FREED_MEMORY_KEPT


_FREED_MEMORY_KEPT: bool | None = None


def _namespace_backend(name: str, device=None) -> Backend:
    if name == "numpy":
        keep_freed_memory()
        return Backend("numpy", array_api_compat.array_namespace(np.empty(0)), "cpu", native=np)
    if name == "array_api_strict":
        strict = _import("array_api_strict", "pip install array-api-strict")
        dev = device if device is not None else strict.Device("CPU_DEVICE")
        return Backend("array_api_strict", strict, dev, native=strict)
    if name == "torch":
        torch = _import("torch", "pip install torch (an optional backend)")
        dev = torch.device(device if device is not None else "cpu")
        xp = array_api_compat.array_namespace(torch.empty(0))
        return Backend("torch", xp, dev, native=torch)
    if name == "cupy":
        return _cupy_backend(0 if device is None else int(getattr(device, "id", device)))
    raise AssertionError(name)


def get_backend(spec: "str | ModuleType | Backend | None" = None, device=None) -> Backend:
    """Return the :class:`Backend` for a device string, a namespace, or its name.

    Args:
        spec: ``"cpu"``, ``"gpu"``, ``"cuda"``, ``"cuda:N"``, a namespace name (``"numpy"``,
            ``"cupy"``, ``"torch"``, ``"array_api_strict"``), an array-API module, an existing
            ``Backend`` (returned as is), or ``None`` to read ``$PORTACNN_DEVICE`` (default
            ``"cpu"``).
        device: for namespace names only, the device within that namespace (e.g.
            ``array_api_strict.Device("device1")``).

    Raises:
        DeviceError: for an unknown string, a missing library (``"gpu"`` without CuPy names
            ``pip install "portacnn[gpu]"``), or CuPy without a usable CUDA device.
    """
    if isinstance(spec, Backend):
        return spec
    if spec is None:
        spec = os.environ.get(ENV_VAR, "cpu") or "cpu"
    if isinstance(spec, ModuleType):
        name = _short_name(spec).split(".")[0]
        if name not in ("numpy", "cupy", "torch", "array_api_strict"):
            raise DeviceError(f"unsupported array namespace {spec.__name__!r}; valid: "
                              "numpy, cupy, torch, array_api_strict")
        return _namespace_backend(name, device)
    if not isinstance(spec, str):
        raise DeviceError(f"device must be a string such as 'cpu' or 'gpu', got {spec!r}")
    key = spec.strip().lower()
    if key == "cpu":
        return _namespace_backend("numpy")
    if key in ("gpu", "cuda"):
        return _cupy_backend(0)
    if key.startswith("cuda:") and key[5:].isdigit():
        return _cupy_backend(int(key[5:]))
    if key in ("numpy", "cupy", "torch", "array_api_strict"):
        return _namespace_backend(key, device)
    raise DeviceError(
        f"unknown device {spec!r}; valid devices: {', '.join(VALID_DEVICES)}"
        + (f" (set by ${ENV_VAR})" if os.environ.get(ENV_VAR) == spec else "")
    )
