"""Choosing a backend: :func:`get_backend` turns a device string, a namespace module or its
name into a :class:`~.base.Backend`; :func:`backend_of` finds the backend an array lives on.

The registered classes (:mod:`.registry`) are asked in turn whether a device string names
them. A namespace no class is registered for gets the generic :class:`~.base.Backend` when
``array_api_compat`` recognises it.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import array_api_compat

from ..namespace import library_name, namespace
from .base import Backend
from .errors import DeviceError
from .registry import registered_class, registered_classes

__all__ = ["get_backend", "backend_of", "registered", "ENV_VAR"]

ENV_VAR = "PORTACNN_DEVICE"


def registered() -> list[str]:
    """The device strings :func:`get_backend` accepts, for error messages and ``--help``."""
    names = ["cpu", "gpu", "cuda", "cuda:N"]
    for cls in registered_classes():
        names += [n for n in (cls.library, *cls.aliases) if n not in names]
    return names


def get_backend(spec: "str | ModuleType | Backend | None" = None, device=None, *,
                local_rank: int | None = None) -> Backend:
    """Return the :class:`~.base.Backend` for a device string, a namespace, or its name.

    Args:
        spec: ``"cpu"`` (NumPy), ``"gpu"`` / ``"cuda"`` / ``"cuda:N"`` (CuPy on device N), a
            library name (``"numpy"``, ``"cupy"``, ``"torch"``, ``"array_api_strict"``,
            ``"jax"``), an array-API module (``jax.numpy``, ``array_api_strict``...), an
            existing ``Backend`` (returned as is), or ``None`` to read ``$PORTACNN_DEVICE``
            (default ``"cpu"``).
        device: with a library name or module, the device within that library (e.g.
            ``array_api_strict.Device("device1")``).
        local_rank: for a process of a data-parallel job, its rank among the processes on
            this machine: a string or module that names no device (``"gpu"``, ``"cuda"``)
            then gives device ``local_rank % device count`` (:meth:`Backend.for_local_rank`),
            and no other device is touched; an explicit ``"cuda:N"`` stays device N.

    Raises:
        DeviceError: for an unknown string, a missing library (``"gpu"`` without CuPy names
            ``pip install "portacnn[gpu]"``), or CuPy without a working CUDA device.
    """
    if isinstance(spec, Backend):
        return spec
    from_env = spec is None
    if from_env:
        spec = os.environ.get(ENV_VAR, "cpu") or "cpu"
    try:
        if isinstance(spec, ModuleType):
            return _from_module(spec, device, local_rank)
        if not isinstance(spec, str):
            raise DeviceError(f"device must be a string such as 'cpu' or 'gpu', got {spec!r}")
        return _from_string(spec.strip().lower(), device, local_rank)
    except DeviceError as exc:
        if from_env:
            raise DeviceError(f"{exc} (the device {spec!r} came from ${ENV_VAR}: unset it or "
                              "pass device= explicitly)") from exc.__cause__
        raise


def _from_string(key: str, device, local_rank: int | None = None):
    for cls in registered_classes():
        matched, dev = cls.parse(key)
        if matched:
            device = device if dev is None else dev
            if device is None and local_rank is not None:
                return cls.for_local_rank(local_rank)
            return cls.create(device)
    raise DeviceError(f"unknown device {key!r}; valid devices: {', '.join(registered())}")


def _from_module(module: ModuleType, device, local_rank: int | None = None) -> Backend:
    name = library_name(module)
    cls = registered_class(name)
    if cls is not None:
        if device is None and local_rank is not None:
            return cls.for_local_rank(local_rank)
        return cls.create(device)
    try:
        xp = array_api_compat.array_namespace(module.empty(0))
    except (TypeError, AttributeError) as exc:
        raise DeviceError(f"{module.__name__!r} is not an array-API namespace that "
                          f"array-api-compat recognises; valid devices: "
                          f"{', '.join(registered())}") from exc
    return Backend(xp, device, native=importlib.import_module(name))


def backend_of(x) -> Backend:
    """The :class:`~.base.Backend` an existing array lives on (its namespace and device)."""
    xp = namespace(x)
    device = array_api_compat.device(x)
    cls = registered_class(library_name(xp))
    if cls is not None:
        return cls.create(device)
    return Backend(xp, device, native=importlib.import_module(library_name(xp)))
