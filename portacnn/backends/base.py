"""The :class:`Backend` base class: one array-API namespace on one device.

A backend is the only place in portacnn that knows which array library runs. Everything above
it receives a namespace ``xp`` from a backend, or infers it from its inputs with
:func:`namespace`, and computes with the array API standard alone.

The base class works for any namespace that ``array_api_compat`` recognises (JAX, for one);
the library classes in this package (:mod:`.numpy`, :mod:`.cupy`, :mod:`.torch`,
:mod:`.strict`) add what their library needs: a device string, thread control, a smoke test.
"""

from __future__ import annotations

import contextlib
import functools
import tracemalloc
from types import ModuleType
from typing import Any

import array_api_compat
import numpy as np  # host side only: random draws and host copies, never kernels

from ..kernels import Kernels
from ..namespace import describe_array, library_name, namespace

__all__ = ["Backend", "DeviceError", "NoDeviceError", "MemoryPeak", "PortableRNG", "namespace",
           "on_device", "to_numpy", "is_host_array", "describe_array", "library_name"]


class DeviceError(RuntimeError):
    """A device was asked for that cannot be used here (unknown name, missing library, no GPU,
    a GPU whose libraries or driver do not work)."""


class NoDeviceError(DeviceError):
    """The machine has no such device at all (no GPU, no NVIDIA driver): nothing to fix in
    portacnn's installation."""


class PortableRNG:
    """A seeded random generator whose draws are identical on every backend.

    Numbers are drawn on the host with ``numpy.random.Generator(PCG64(seed))`` and moved to the
    backend's device once, so the same seed gives the same weights on NumPy, CuPy, torch, JAX
    and array_api_strict (the standard itself has no random numbers).
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

    def bernoulli(self, shape, keep: float, dtype):
        """A 0/1 mask of ``shape`` in ``dtype`` (ones with probability ``keep``), drawn in
        float32 on the host and moved once: the same mask on every backend."""
        draws = self.host.random(size=shape, dtype=np.float32)
        return self.backend.asarray(draws < np.float32(keep), dtype=dtype)

    def permutation(self, n: int) -> np.ndarray:
        """A permutation of ``range(n)`` as a host NumPy array (used to shuffle batches)."""
        return self.host.permutation(n)


class Backend:
    """An array-API namespace and a device, with the few helpers portacnn needs.

    The base class serves any namespace ``array_api_compat`` recognises; subclasses exist for
    libraries that need more (see :mod:`portacnn.backends`).

    Attributes:
        name: the library's name (``"numpy"``, ``"cupy"``, ``"torch"``, ``"jax"``...).
        xp: the array-API-compatible namespace.
        device: the device arrays are created on.
        kernels: the kernel set this backend runs (:class:`~portacnn.kernels.Kernels`, the
            portable one, unless a subclass names a faster set): every layer, the optimizers
            and the training loop call kernels as its attributes.
        host_sync_is_free: True where reading a scalar back (``float(x)``) does not stall a
            device queue, so progress can show running figures.
        device_data_limit: most bytes of data (inputs in the working dtype plus labels) that
            ``fit`` / ``evaluate`` / ``predict`` move to the device whole, once, instead of
            batch by batch; batches are then gathered on the device (``xp.take``), and a
            shuffled epoch holds as many bytes again. None (or 0) where host arrays are the
            device's arrays (the CPU) or moving per batch is the better choice.
        accelerator: True when arrays live off the host (a GPU): CPU thread counts do not
            change the device's speed, and timings need :meth:`synchronize`.
        host_memory_traced: True where arrays are NumPy buffers, which ``tracemalloc`` sees
            (:meth:`memory_peak`).
    """

    library: str | None = None      # the module a registered subclass serves
    aliases: tuple = ()             # other device strings that select it
    kernels: Kernels = Kernels()
    host_sync_is_free = False
    device_data_limit: int | None = None
    accelerator = False
    host_memory_traced = False

    def __init__(self, xp: ModuleType, device: Any = None, native: ModuleType | None = None,
                 name: str | None = None):
        self.xp = xp
        self.device = device if device is not None else array_api_compat.device(xp.empty(0))
        self.native = native
        self.name = name or library_name(xp)
        self._array_type = type(xp.empty(0, device=self.device))

    @classmethod
    def parse(cls, key: str) -> tuple[bool, Any]:
        """Whether the (lower-case) device string ``key`` selects this class, and the device
        it names (None for the default)."""
        return False, None

    @classmethod
    def create(cls, device=None) -> "Backend":
        """An instance on ``device`` (None: the library's default device)."""
        raise NotImplementedError(f"{cls.__name__} is made by get_backend(module)")

    # --- identity -------------------------------------------------------------------------
    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, device={self.device!r})"

    def __eq__(self, other) -> bool:
        return (isinstance(other, Backend) and other.xp is self.xp
                and str(other.device) == str(self.device))

    def __hash__(self) -> int:
        return hash((self.name, str(self.device)))

    @property
    def description(self) -> str:
        """A one-line human description, e.g. ``"numpy 2.1.0 on cpu"``."""
        version = getattr(self.native, "__version__", "") if self.native else ""
        return " ".join(part for part in (self.name, version, "on", str(self.device)) if part)

    # --- dtypes and arrays ----------------------------------------------------------------
    def dtype(self, dtype):
        """Resolve ``"float32"`` / ``"float64"`` (or a dtype of this namespace) to a dtype."""
        if isinstance(dtype, str):
            if dtype not in ("float32", "float64"):
                raise ValueError(f"unsupported dtype {dtype!r}: use 'float32' or 'float64'")
            return getattr(self.xp, dtype)
        return dtype

    def owns(self, x) -> bool:
        """True if ``x`` is an array of this backend's namespace on its device."""
        if type(x) is self._array_type and str(array_api_compat.device(x)) == str(self.device):
            return True
        try:
            xp = array_api_compat.array_namespace(x)
        except TypeError:
            return False
        return xp is self.xp and str(array_api_compat.device(x)) == str(self.device)

    def check(self, x, what: str = "the input") -> None:
        """Raise ``TypeError`` unless ``x`` is an array of this backend on its device.

        The message names both sides and how to move the array, e.g. "the input is a numpy
        array on cpu but the model is on cupy (cuda:0): move it with model.backend.asarray(x)".
        """
        if not self.owns(x):
            raise TypeError(
                f"{what} is a {describe_array(x)} but the model is on {self.name} "
                f"({self.device}): move it with model.backend.asarray(x)"
            )

    def asarray(self, x, dtype=None):
        """Return ``x`` (a host array, list, or an array of any backend) on this device.

        ``dtype`` may be a string (``"float32"``) or a dtype of this namespace. Arrays already
        on this backend are returned without a copy when the dtype matches.
        """
        dtype = self.dtype(dtype) if dtype is not None else None
        if not self.owns(x) and _is_foreign_array(x):
            x = to_numpy(x)
        with self.activate():
            return self.xp.asarray(x, dtype=dtype, device=self.device)

    def to_numpy(self, x) -> np.ndarray:
        """Copy an array of any backend to a host NumPy array."""
        return to_numpy(x)

    def rng(self, seed: int | None = None) -> PortableRNG:
        """A :class:`PortableRNG` seeded with ``seed`` drawing onto this backend."""
        return PortableRNG(self, seed)

    def for_local_rank(self, local_rank: int) -> "Backend":
        """The backend of the process with node-local rank ``local_rank`` when several
        processes share this machine (data parallelism): this one, where there is a single
        device. GPU backends return device ``local_rank % device count``."""
        return self

    # --- execution ------------------------------------------------------------------------
    def activate(self):
        """Context manager making this backend's device the current one, for libraries that
        launch on a current device (CuPy); a no-op elsewhere."""
        return contextlib.nullcontext()

    def synchronize(self) -> None:
        """Wait until queued device work is finished (a no-op on the CPU). Use before timing."""

    def memory_peak(self) -> "MemoryPeak":
        """Context manager measuring the peak of the memory allocated inside it, above the
        level at its start: ``with backend.memory_peak() as peak: ...; peak.bytes`` (None where
        this backend cannot tell). Backends whose arrays are NumPy buffers
        (``host_memory_traced``) trace host allocations with ``tracemalloc``; GPU backends count
        their device memory."""
        return MemoryPeak(_TracedPeak() if self.host_memory_traced else _UnknownPeak())

    def device_info(self) -> dict:
        """What a benchmark report names the device by: the library and its version, the
        device; GPU backends add its name, the driver and runtime versions and its memory."""
        version = getattr(self.native, "__version__", None) if self.native else None
        return {"library": self.name, "library_version": version, "device": str(self.device)}

    def limit_threads(self, threads: int | None):
        """Context manager capping the CPU threads of the BLAS libraries loaded in this process
        (threadpoolctl); ``None`` leaves them alone. Subclasses add their library's own pools."""
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                    or threads < 1):
            raise ValueError(f"threads must be a positive int or None, got {threads!r}")
        if threads is None:
            return contextlib.nullcontext()
        from threadpoolctl import threadpool_limits

        return threadpool_limits(limits=threads)

    def thread_info(self) -> dict:
        """The thread count of each CPU pool in use, e.g. ``{"openblas": 1}``."""
        from threadpoolctl import threadpool_info

        return {pool["internal_api"]: pool["num_threads"] for pool in threadpool_info()}


class MemoryPeak:
    """The peak memory of a ``with`` block, in bytes (``.bytes``; None if unknown), from a probe
    with ``start()`` and ``stop() -> int | None`` (see :meth:`Backend.memory_peak`)."""

    def __init__(self, probe):
        self.probe = probe
        self.bytes: int | None = None

    def __enter__(self) -> "MemoryPeak":
        self.probe.start()
        return self

    def __exit__(self, *exc) -> None:
        self.bytes = self.probe.stop()


class _TracedPeak:
    # Peak of Python-traced host allocations (NumPy reports its buffers to tracemalloc).
    def start(self):
        self._was_tracing = tracemalloc.is_tracing()
        if not self._was_tracing:
            tracemalloc.start()
        tracemalloc.reset_peak()
        self._base = tracemalloc.get_traced_memory()[0]

    def stop(self):
        peak = tracemalloc.get_traced_memory()[1]
        if not self._was_tracing:
            tracemalloc.stop()
        return peak - self._base


class _UnknownPeak:
    def start(self):
        pass

    def stop(self):
        return None


def on_device(method):
    """Decorator: run ``method(obj, ...)`` with ``obj.backend``'s device current
    (:meth:`Backend.activate`), so that everything it allocates or launches lands on that
    device. ``obj.backend`` may be None (an unbuilt layer): then nothing is activated."""

    @functools.wraps(method)
    def run(obj, *args, **kwargs):
        backend = obj.backend
        if backend is None:
            return method(obj, *args, **kwargs)
        with backend.activate():
            return method(obj, *args, **kwargs)

    return run


def is_host_array(x) -> bool:
    """True for a host NumPy array (data a model moves to its device batch by batch)."""
    return isinstance(x, np.ndarray)


def _is_foreign_array(x) -> bool:
    return not isinstance(x, (list, tuple, int, float)) and (
        hasattr(x, "__array_namespace__") or array_api_compat.is_array_api_obj(x))


def to_numpy(x) -> np.ndarray:
    """Copy an array of any supported backend (or a Python sequence) to host NumPy."""
    if isinstance(x, np.ndarray):
        return x
    if array_api_compat.is_cupy_array(x):
        return x.get()
    if array_api_compat.is_torch_array(x):
        return x.detach().cpu().numpy()
    if hasattr(x, "__dlpack__"):
        try:
            return np.from_dlpack(x)
        except (TypeError, RuntimeError, BufferError, ValueError):
            pass                     # e.g. array_api_strict's second device refuses dlpack
    if hasattr(x, "__array_namespace__") and not hasattr(x, "__array__"):
        xp = x.__array_namespace__()
        return np.asarray(xp.asarray(x, device=_host_device(xp)))
    return np.asarray(x)


def _host_device(xp):
    return array_api_compat.device(xp.empty(0))
