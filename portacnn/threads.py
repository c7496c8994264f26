"""How many BLAS threads training uses when nobody says: the one policy ``fit`` and the command
line share.

The policy is "the cores nobody else is using, at least one": the CPUs this process may run on
minus the machine's 1-minute load average, a core counting as idle while at most a quarter of
it is in use. It is for one process; an MPI job
keeps one thread a process (Open MPI binds each process to one core, where more threads would
share it). OpenBLAS's threads wait for each other at the end of every matrix product, so one thread
on a core another program keeps busy stalls all of them: on a loaded 2-core machine two threads
ran a small VGG's training step 7.7x slower than one (docs/performance.md), while on an idle one
the extra core gains at most its share. Over-subscribing costs far more than leaving a core
idle, so a core more than a quarter busy counts as busy. The load average counts this process
too when it has been computing for the last minute (a second ``fit`` in a script): it then
leaves one more core alone, the safe side.
"""

from __future__ import annotations

import math
import os

__all__ = ["available_cores", "default_threads", "threads_for_fit"]


def available_cores() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_threads(*, cores: int | None = None, load: float | None = None) -> int:
    """BLAS threads for a training process when none are asked for:
    ``floor(cores - load + IDLE_ENOUGH)``, at least 1 and at most ``cores``.

    Args:
        cores: the CPUs available; default :func:`available_cores`.
        load: runnable threads of everything else; default the 1-minute load average
            (``os.getloadavg``; 0 where the OS has none).

    Returns:
        A positive int, for ``backend.limit_threads``.
    """
    cores = available_cores() if cores is None else cores
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):
            load = 0.0
    return max(1, min(cores, math.floor(cores - max(load, 0.0) + IDLE_ENOUGH)))


IDLE_ENOUGH = 0.25      # a core this much (or less) in use still counts as idle


def threads_for_fit(requested: int | None = None, *, blas_threads: int | None = None) -> int | None:
    """The BLAS thread count ``fit`` runs at, for ``backend.limit_threads``: ``requested`` if
    given; None (leave the pools alone) when something already capped them below the cores
    (the command line, a benchmark, the user's ``threadpool_limits``); else
    :func:`default_threads`.

    ``blas_threads``: the BLAS pools' current thread count (read with threadpoolctl by default;
    None when no BLAS library is loaded, as on backends that bring their own).
    """
    if requested is not None:
        return requested
    if blas_threads is None:
        blas_threads = _blas_threads()
    if blas_threads is None or blas_threads < available_cores():
        return None
    return default_threads()


def _blas_threads() -> int | None:
    from threadpoolctl import threadpool_info

    counts = [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]
    return max(counts) if counts else None

