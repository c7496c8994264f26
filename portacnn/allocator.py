"""One process-wide setting that pays on the CPU, made only when asked: :func:`keep_freed_memory`.

Importing portacnn or creating a backend changes no allocator setting, thread pool or
environment variable; the training command and the benchmark call this explicitly.
"""

from __future__ import annotations

import ctypes
import platform

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3          # from glibc's malloc.h
_APPLIED: bool | None = None


def keep_freed_memory() -> bool:
    """Let glibc's allocator keep freed blocks of up to 32 MiB for reuse, and trim the heap
    only above 256 MiB of free memory.

    A training step allocates and frees the same few MB-sized arrays every batch. By default
    glibc hands blocks that large back to the kernel on ``free`` and takes fresh zeroed pages
    on the next ``malloc``: hundreds of page faults per step (see docs/performance.md). The
    cost: the process keeps up to 256 MiB of freed memory instead of returning it at once.

    Returns True if the setting is in force (glibc only; elsewhere nothing changes). Calling it
    again does nothing more.
    """
    global _APPLIED
    if _APPLIED is not None:
        return _APPLIED
    _APPLIED = False
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        try:
            mallopt = ctypes.CDLL(None).mallopt
        except (OSError, AttributeError):
            return False
        _APPLIED = bool(mallopt(_M_MMAP_THRESHOLD, 32 << 20)) and \
            bool(mallopt(_M_TRIM_THRESHOLD, 256 << 20))
    return _APPLIED
