"""The ``array_api_strict`` backend: the standard and nothing more, for tests.

It refuses anything outside the 2024.12 standard; its second device (``Device("device1")``)
catches arrays created without ``device=``.
"""

from __future__ import annotations

from .base import Backend
from .errors import import_library
from .registry import register

__all__ = ["StrictBackend"]


@register
class StrictBackend(Backend):
    """``array_api_strict`` on its default CPU device or on ``device``.

    Its arrays reach the host by the generic :meth:`Backend.array_to_numpy`: DLPack on the
    default device, ``np.asarray`` on the second one (which DLPack refuses).
    """

    library = "array_api_strict"
    aliases = ()
    host_sync_is_free = True
    host_memory_traced = True

    @classmethod
    def parse(cls, key: str):
        return key == "array_api_strict", None

    @classmethod
    def create(cls, device=None) -> "StrictBackend":
        strict = import_library("array_api_strict", "pip install array-api-strict")
        return cls(strict, device if device is not None else strict.Device("CPU_DEVICE"),
                   native=strict)
