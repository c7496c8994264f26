"""How asking for a device fails: :class:`DeviceError`, :class:`NoDeviceError`, and
:func:`import_library`, which turns a missing array library into a ``DeviceError`` that names
the install."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["DeviceError", "NoDeviceError", "import_library"]


class DeviceError(RuntimeError):
    """A device was asked for that cannot be used here (unknown name, missing library, no GPU,
    a GPU whose libraries or driver do not work)."""


class NoDeviceError(DeviceError):
    """The machine has no such device at all (no GPU, no NVIDIA driver): nothing to fix in
    portacnn's installation."""


def import_library(module: str, install_hint: str) -> ModuleType:
    """Import the array library ``module`` (``"cupy"``, ``"jax.numpy"``) when a backend is
    made, or raise :class:`DeviceError` ``"<module> is not installed: <install_hint>"``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise DeviceError(f"{module} is not installed: {install_hint}") from exc
