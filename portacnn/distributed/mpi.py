"""The MPI world of a data-parallel job: whether a launcher started this process, the
communicator, each process's rank on its machine and device, and waiting for the other
processes with a time bound. The replicas that train on it are in :mod:`.data_parallel`; how a
job ends when a process fails is :mod:`.ending`; the package docstring
(:mod:`portacnn.distributed`) describes the whole.

Importing this module does not import mpi4py; :func:`world` does, on first use.
"""

from __future__ import annotations

import array
import ctypes
import os
import pickle
import sys
import time

from ..backends import Backend, get_backend

__all__ = ["DEFAULT_TIMEOUT_S", "DistributedError", "DistributedTimeoutError", "FAILURE_TAG",
           "MPI_ENVIRONMENT", "PeerFailedError", "TIMEOUT_VARIABLE", "allgather_object",
           "broadcast_object", "failed_peer", "launched_by_mpi", "local_rank", "mpi_cuda_support", "rank_device",
           "root_first", "silence_unless_root", "wait", "wait_timeout", "world"]

# Variables an MPI launcher sets in each process it starts: Open MPI, MPICH / Intel MPI (Hydra),
# PMIx (Open MPI 5, Slurm's srun --mpi=pmix), MVAPICH.
MPI_ENVIRONMENT = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MV2_COMM_WORLD_SIZE")

TIMEOUT_VARIABLE = "PORTACNN_MPI_TIMEOUT"
DEFAULT_TIMEOUT_S = 300.0
FAILURE_TAG = 32_001        # tag of the failure notes (:mod:`.ending`); MPI allows up to 32767


class DistributedError(RuntimeError):
    """Data-parallel training cannot run as asked (no mpi4py, a model, settings or data that
    differ between processes, a layer that couples the samples of a batch)."""


class DistributedTimeoutError(DistributedError):
    """The other processes did not answer within the time bound (:func:`wait_timeout`)."""


class PeerFailedError(DistributedError):
    """Another process of the job failed (``rank``): this one stops too."""

    def __init__(self, rank: int, size: int):
        super().__init__(f"process {rank} of {size} failed, so this process stops too")
        self.rank = rank


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


def mpi_cuda_support() -> bool:
    """Whether the MPI library mpi4py runs on reports that it takes CUDA device buffers: Open
    MPI's ``MPIX_Query_cuda_support()`` (built with CUDA and CUDA enabled at run time), or
    MPICH's ``MPIX_GPU_query_support`` for CUDA. False for a library that answers no, or that
    has neither query (it cannot be known to work, so it is not tried). The PyPI Open MPI that
    ``pip install "portacnn[mpi]"`` brings is built without CUDA: False."""
    MPI = _mpi()
    try:
        library = ctypes.CDLL(MPI.__file__)      # its lookups reach the MPI library it links
    except OSError:
        return False
    query = getattr(library, "MPIX_Query_cuda_support", None)
    if query is not None:
        return bool(query())
    query = getattr(library, "MPIX_GPU_query_support", None)
    if query is not None:
        supported = ctypes.c_int(0)
        return query(0, ctypes.byref(supported)) == 0 and bool(supported.value)  # 0: CUDA
    return False


def local_rank(comm=None) -> int:
    """This process's rank among the processes of the job on the same machine (0, 1, ...)."""
    comm = comm if comm is not None else world()
    node = comm.Split_type(_mpi().COMM_TYPE_SHARED, key=comm.rank)
    try:
        return node.rank
    finally:
        node.Free()


def rank_device(device=None, comm=None) -> Backend:
    """The backend this process trains on, with its device made current for this thread.

    ``device`` is a device string or module as for :func:`~portacnn.backends.get_backend`
    (None: ``$PORTACNN_DEVICE``). One that names no device of a library with several
    (``"gpu"``, ``"cuda"``) gives device ``local_rank % device count``, chosen before any device
    is touched, so each process makes a CUDA context only on its own GPU; an explicit
    ``"cuda:N"`` stays device N, and a backend is used as it is. To place the processes
    otherwise, give each its own ``CUDA_VISIBLE_DEVICES``."""
    if isinstance(device, Backend):
        backend = device
    else:
        backend = get_backend(device, local_rank=local_rank(comm))
    backend.use()
    return backend


def root_first(fn, comm=None):
    """``fn()`` on rank 0, then on the other processes once it has returned; its result on
    each. For work that must not run in several processes at once, such as a download into a
    shared directory (the others then find the files in place). The others wait without a
    time bound (a download takes what it takes), but stop if rank 0 fails."""
    comm = comm if comm is not None else world()
    result = fn() if comm.rank == 0 else None
    wait(comm.Ibarrier(), comm, "root_first (waiting for rank 0)", timeout=None)
    return result if comm.rank == 0 else fn()


def silence_unless_root(comm=None) -> None:
    """Send standard output of every process but rank 0 to ``os.devnull`` (for a command line
    run under mpiexec: one copy of each line; errors still reach standard error)."""
    comm = comm if comm is not None else world()
    if comm.rank != 0:
        sys.stdout = open(os.devnull, "w")        # noqa: SIM115 - for the process's lifetime


# --- waiting for the other processes ---------------------------------------------------------
def wait_timeout(timeout: float | None = None) -> float | None:
    """The longest wait for the other processes, in seconds: ``timeout`` if given, else
    ``$PORTACNN_MPI_TIMEOUT``, else :data:`DEFAULT_TIMEOUT_S`; None (no bound) for 0."""
    if timeout is None:
        text = os.environ.get(TIMEOUT_VARIABLE, "").strip()
        try:
            timeout = float(text) if text else DEFAULT_TIMEOUT_S
        except ValueError:
            raise DistributedError(
                f"{TIMEOUT_VARIABLE}={text!r} is not a number: give the seconds to wait for the "
                "other processes (0: no bound)") from None
    if not timeout >= 0:                          # also NaN
        raise DistributedError(f"the MPI wait bound must be >= 0 seconds, got {timeout!r}")
    return None if timeout == 0 else float(timeout)


def wait(request, comm, what: str, timeout: float | None) -> None:
    """Wait for a non-blocking MPI operation of ``comm``, giving the core away between polls
    (MPI's own blocking wait spins; on a machine shared with other work the spinning process
    would take the core that a slower process of the same step needs: docs/distributed.md).

    Raises :class:`PeerFailedError` as soon as another process reports a failure (it then
    waits for this one's note, :func:`~.ending.end_together`), and
    :class:`DistributedTimeoutError` after ``timeout`` seconds (None: no bound): a process
    that waits that long is stuck, or the processes make different sequences of calls.
    ``what`` names the wait in that error.
    """
    start = time.monotonic()
    probed = start
    while not request.Test():
        now = time.monotonic()
        if now - probed > 0.005:                 # a probe every 5 ms is plenty
            probed = now
            peer = failed_peer(comm)
            if peer is not None:
                raise PeerFailedError(peer, comm.size)
        if timeout is not None and now - start > timeout:
            raise DistributedTimeoutError(
                f"no answer from the other processes for {timeout:g} s in {what}: a process is "
                "stuck, or the processes make different calls (a fit, evaluate or predict that "
                "not every process makes, or one with other epochs, batch size or data). Every "
                "process must make the same calls with the same settings; to wait longer, set "
                f"{TIMEOUT_VARIABLE}=SECONDS (0: no bound)")
        _yield()


_yield = getattr(os, "sched_yield", lambda: time.sleep(0))


def failed_peer(comm) -> int | None:
    """The rank of a process of ``comm`` that has reported a failure to this one (a note
    waiting to be received, :data:`FAILURE_TAG`), or None. The note is left in place."""
    MPI = _mpi()
    status = MPI.Status()
    if comm.iprobe(source=MPI.ANY_SOURCE, tag=FAILURE_TAG, status=status):
        return status.source
    return None


def allgather_object(comm, obj, what: str, timeout: float | None) -> list:
    """Every process's ``obj`` (picklable), in rank order, on every process: two bounded
    non-blocking exchanges (the pickles' lengths, then the pickles), see :func:`wait`."""
    data = pickle.dumps(obj)
    lengths = array.array("q", [0]) * comm.size
    wait(comm.Iallgather(array.array("q", [len(data)]), lengths), comm, what, timeout)
    everything = bytearray(sum(lengths))
    wait(comm.Iallgatherv(bytearray(data), [everything, list(lengths)]), comm, what, timeout)
    found, offset = [], 0
    for length in lengths:
        found.append(pickle.loads(everything[offset:offset + length]))
        offset += length
    return found


def broadcast_object(comm, obj, what: str, timeout: float | None, root: int = 0):
    """``obj`` (picklable) of process ``root``, on every process (bounded, see :func:`wait`)."""
    data = pickle.dumps(obj) if comm.rank == root else b""
    length = array.array("q", [len(data)])
    wait(comm.Ibcast(length, root=root), comm, what, timeout)
    buffer = bytearray(data) if comm.rank == root else bytearray(length[0])
    wait(comm.Ibcast(buffer, root=root), comm, what, timeout)
    return obj if comm.rank == root else pickle.loads(buffer)
