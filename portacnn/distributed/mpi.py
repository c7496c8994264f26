"""The MPI world of a data-parallel job: whether a launcher started this process, the
communicator, each process's rank on its machine and device, and ending every process together
when one fails. The replicas that train on it are in :mod:`.data_parallel`; the package
docstring (:mod:`portacnn.distributed`) describes the whole.

Importing this module does not import mpi4py; :func:`world` does, on first use.
"""

from __future__ import annotations

import os
import sys
import time

from ..backends import Backend, get_backend

__all__ = ["DistributedError", "MPI_ENVIRONMENT", "abort", "abort_on_error", "launched_by_mpi",
           "local_rank", "rank_device", "root_first", "silence_unless_root", "world"]

# Variables an MPI launcher sets in each process it starts: Open MPI, MPICH / Intel MPI (Hydra),
# PMIx (Open MPI 5, Slurm's srun --mpi=pmix), MVAPICH.
MPI_ENVIRONMENT = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MV2_COMM_WORLD_SIZE")


class DistributedError(RuntimeError):
    """Data-parallel training cannot run as asked (no mpi4py, a model or data that differ
    between processes, a layer that couples the samples of a batch)."""


# --- the MPI world ------------------------------------------------------------------------
def launched_by_mpi() -> bool:
    """True when an MPI launcher (``mpiexec``, ``mpirun``, ``srun``) started this process. Read
    from the environment (:data:`MPI_ENVIRONMENT`), so nothing is imported to find out."""
    return any(name in os.environ for name in MPI_ENVIRONMENT)


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise DistributedError('data-parallel training needs mpi4py and an MPI library: pip '
                               'install "portacnn[mpi]"') from exc
    return MPI


def world():
    """``MPI.COMM_WORLD``: every process of the job. Importing mpi4py initialises MPI."""
    return _mpi().COMM_WORLD


def local_rank(comm=None) -> int:
    """This process's rank among the processes of the job on the same machine (0, 1, ...)."""
    comm = comm if comm is not None else world()
    node = comm.Split_type(_mpi().COMM_TYPE_SHARED, key=comm.rank)
    try:
        return node.rank
    finally:
        node.Free()


def rank_device(device=None, comm=None) -> Backend:
    """The backend this process trains on: ``device`` (a device string or a backend, as for
    :func:`~portacnn.backends.get_backend`) and, where the library has several devices,
    device ``local_rank % device count``. To place the processes otherwise, give each its own
    ``CUDA_VISIBLE_DEVICES``."""
    backend = device if isinstance(device, Backend) else get_backend(device)
    return backend.for_local_rank(local_rank(comm))


def root_first(fn, comm=None):
    """``fn()`` on rank 0, then on the other processes once it has returned; its result on
    each. For work that must not run in several processes at once, such as a download into a
    shared directory (the others then find the files in place)."""
    comm = comm if comm is not None else world()
    result = fn() if comm.rank == 0 else None
    comm.Barrier()
    return result if comm.rank == 0 else fn()


# --- failing together -----------------------------------------------------------------------
def abort(status: int = 1, comm=None) -> None:
    """End every process of the job with exit status ``status`` (``MPI_Abort``); a no-op
    without mpi4py (then MPI was never started and nothing can wait for this process)."""
    try:
        comm = comm if comm is not None else world()
    except DistributedError:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    comm.Abort(status)


def abort_on_error(comm=None) -> None:
    """Make an uncaught exception in this process end the whole job: the traceback is printed
    (after a line naming the rank) and ``MPI_Abort(1)`` stops every process, so the job exits
    with status 1 within seconds instead of the other processes waiting forever. Installs a
    ``sys.excepthook`` (once; nothing with a single process)."""
    comm = comm if comm is not None else world()
    if comm.size == 1 or getattr(sys.excepthook, "aborts_mpi_job", False):
        return
    previous = sys.excepthook

    def hook(kind, value, tb):
        print(f"portacnn: process {comm.rank} of {comm.size} failed; ending the MPI job",
              file=sys.stderr)
        previous(kind, value, tb)
        abort(1, comm)

    hook.aborts_mpi_job = True
    sys.excepthook = hook


def silence_unless_root(comm=None) -> None:
    """Send standard output of every process but rank 0 to ``os.devnull`` (for a command line
    run under mpiexec: one copy of each line; errors still reach standard error)."""
    comm = comm if comm is not None else world()
    if comm.rank != 0:
        sys.stdout = open(os.devnull, "w")        # noqa: SIM115 - for the process's lifetime


# --- waiting for a collective call -------------------------------------------------------------
def _wait(request) -> None:
    """Wait for a non-blocking MPI operation, giving the core away between polls. MPI's own
    blocking wait spins; on a machine shared with other work the spinning process would take
    the core that a slower process of the same step needs (see docs/distributed.md)."""
    while not request.Test():
        _yield()


_yield = getattr(os, "sched_yield", lambda: time.sleep(0))
