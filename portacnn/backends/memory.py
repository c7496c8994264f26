"""Peak memory of a block of code, for benchmark reports: ``with backend.memory_peak() as
peak: ...; peak.bytes``.

:class:`MemoryPeak` runs a probe with ``start()`` and ``stop() -> int | None``. Here are the
probes that know no array library: :class:`TracedPeak` (host allocations, which ``tracemalloc``
sees for NumPy buffers) and :class:`UnknownPeak` (None). GPU backends bring their own probe
beside their class (:mod:`.cupy`, :mod:`.torch`).
"""

from __future__ import annotations

import tracemalloc

__all__ = ["MemoryPeak", "TracedPeak", "UnknownPeak"]


class MemoryPeak:
    """The peak memory of a ``with`` block, in bytes (``.bytes``; None if unknown), from a probe
    with ``start()`` and ``stop() -> int | None`` (see :meth:`~.base.Backend.memory_peak`)."""

    def __init__(self, probe):
        self.probe = probe
        self.bytes: int | None = None

    def __enter__(self) -> "MemoryPeak":
        self.probe.start()
        return self

    def __exit__(self, *exc) -> None:
        self.bytes = self.probe.stop()


class TracedPeak:
    """Peak of the Python-traced host allocations above the level at ``start`` (NumPy reports
    its buffers to ``tracemalloc``); tracing is switched on for the block if it was off."""

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


class UnknownPeak:
    """For backends that cannot tell: ``bytes`` stays None."""

    def start(self):
        pass

    def stop(self):
        return None
