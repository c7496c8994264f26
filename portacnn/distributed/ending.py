"""How a data-parallel job ends when a process fails or is interrupted: together, with one
message, without waiting forever.

A process that fails (an uncaught exception, :func:`abort_on_error`; or the command line's
error, :func:`end_together`) sends a *failure note* to every other process: its message, as a
point-to-point message with :data:`~.mpi.FAILURE_TAG`, which no collective call can take. Then
it waits up to :data:`FAILURE_GRACE_S` seconds for theirs:

- Every process fails: the same error at the same point (a settings check that fails on every
  process, a model refused on every process), or one process's error that the others learn of
  in their next wait for it (:func:`~.mpi.wait` raises :class:`~.mpi.PeerFailedError`). Rank 0
  prints each cause once (a process that stopped only because another failed is no cause), MPI
  is finalised, and every process exits normally: the others with status 0 and rank 0 last,
  with the error's status, which becomes the job's. A launcher (Open MPI's prterun, MPICH's
  Hydra) that sees a process exit non-zero while others still run ends them and prints a note
  of its own; in this order it has nothing to end.
- Not every process answers in time (one is busy outside the waits of portacnn, or stuck):
  this process prints its error after a line naming its rank and ends the job with
  ``MPI_Abort``.

Interrupts: Open MPI 5's ``mpiexec`` passes a Ctrl-C on as SIGCONT then SIGTERM, kills the
processes 0.25 s later, and forwards none of their output from the Ctrl-C on. The command line
turns SIGTERM into :class:`Terminated` (:func:`interrupt_on_sigterm`); rank 0 then writes
``interrupted`` to the terminal the job was started from, where there is one.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import traceback

from .mpi import FAILURE_TAG, DistributedError, PeerFailedError, _mpi, world

__all__ = ["FAILURE_GRACE_S", "Terminated", "abort", "abort_on_error", "end_together",
           "interrupt_on_sigterm"]

FAILURE_GRACE_S = 10.0      # how long a failed process waits for the others' failure notes


class Terminated(KeyboardInterrupt):
    """SIGTERM: how Open MPI's mpiexec passes on a Ctrl-C, and how batch systems stop a job."""


def interrupt_on_sigterm() -> None:
    """Make SIGTERM raise :class:`Terminated` (a ``KeyboardInterrupt``) in the main thread, so
    that a process stopped by its launcher ends like one interrupted by Ctrl-C."""
    def handler(signum, frame):
        raise Terminated()

    signal.signal(signal.SIGTERM, handler)


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
    """Make an uncaught exception in this process end the whole job within seconds instead of
    leaving the others waiting for it forever: its traceback goes to :func:`end_together`
    (printed once by rank 0 when every process fails, else by this process before
    ``MPI_Abort``). Installs a ``sys.excepthook`` (once; nothing with a single process)."""
    comm = comm if comm is not None else world()
    if comm.size == 1 or getattr(sys.excepthook, "ends_mpi_job", False):
        return

    rank = comm.rank

    def hook(kind, value, tb):
        message = "".join(traceback.format_exception(kind, value, tb)).rstrip("\n")
        end_together(message, 1, value, comm)    # returns once every process has failed
        if rank != 0:         # MPI is finalised; rank 0 exits last, with Python's status 1
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)

    hook.ends_mpi_job = True
    sys.excepthook = hook


def end_together(message: str, status: int, error: BaseException | None = None,
                 comm=None) -> int:
    """End this process after a failure (``message``: what went wrong; ``status``: the exit
    status it calls for; ``error``: the exception, if any) together with the others, as the
    module's docstring describes. Returns the status this process should exit with (rank 0:
    ``status``, the others: 0) once every process has failed and MPI is finalised; otherwise
    ends the job with ``MPI_Abort(status)``. Without MPI, prints ``message`` and returns
    ``status``."""
    try:
        comm = comm if comm is not None else world()
    except DistributedError:
        print(message, file=sys.stderr, flush=True)
        return status
    if comm.size == 1:
        print(message, file=sys.stderr, flush=True)
        return status
    MPI = _mpi()
    rank, size = comm.rank, comm.size        # comm cannot be asked once MPI is finalised
    told = isinstance(error, Terminated) and rank == 0
    if told:                         # before the launcher's SIGKILL: it follows in 0.25 s
        _tell_terminal(message)
    note = {"message": message, "after_peer": isinstance(error, PeerFailedError),
            "host": MPI.Get_processor_name(), "pid": os.getpid()}
    notes = _exchange_notes(comm, note) if size == MPI.COMM_WORLD.size else None
    if notes is None:
        print(f"portacnn: process {rank} of {size} failed; ending the MPI job\n{message}",
              file=sys.stderr, flush=True)
        abort(status, comm)
        return status
    if rank == 0 and not told:
        print(_summary(notes, size), file=sys.stderr, flush=True)
    sys.stdout.flush()
    sys.stderr.flush()
    MPI.Finalize()
    if rank != 0:
        return 0
    _outlive(notes, note["host"])
    return status


def _exchange_notes(comm, note: dict) -> dict | None:
    """Send ``note`` to every other process and receive each one's: ``{rank: note}``, or None
    if they have not all come within :data:`FAILURE_GRACE_S` seconds."""
    MPI = _mpi()
    sends = [comm.isend(note, dest=r, tag=FAILURE_TAG) for r in range(comm.size)
             if r != comm.rank]
    notes = {comm.rank: note}
    status = MPI.Status()
    deadline = time.monotonic() + FAILURE_GRACE_S
    while len(notes) < comm.size or not MPI.Request.Testall(sends):
        if comm.iprobe(source=MPI.ANY_SOURCE, tag=FAILURE_TAG, status=status):
            notes[status.source] = comm.recv(source=status.source, tag=FAILURE_TAG)
        elif time.monotonic() > deadline:
            return None
        else:
            time.sleep(0.001)
    return notes


def _summary(notes: dict, size: int) -> str:
    """The causes of a failure of every process, each once: the message alone when every
    process failed alike, else each message after the processes that raised it."""
    causes = {r: n["message"] for r, n in sorted(notes.items()) if not n["after_peer"]}
    groups: dict[str, list[int]] = {}
    for rank, message in (causes or {0: notes[0]["message"]}).items():
        groups.setdefault(message, []).append(rank)
    if len(groups) == 1 and len(causes) == size:
        return next(iter(groups))
    return "\n".join(f"[process{'es' if len(ranks) > 1 else ''} "
                     f"{', '.join(map(str, ranks))} of {size}] {message}"
                     for message, ranks in groups.items())


def _outlive(notes: dict, host: str) -> None:
    """Wait (at most 5 s) until the other processes on this machine have exited, so that
    rank 0's non-zero status comes last; a moment for processes on other machines."""
    pids = [n["pid"] for n in notes.values() if n["host"] == host and n["pid"] != os.getpid()]
    deadline = time.monotonic() + 5.0
    while any(map(_running, pids)) and time.monotonic() < deadline:
        time.sleep(0.005)
    if any(n["host"] != host for n in notes.values()):
        time.sleep(0.5)


def _running(pid: int) -> bool:
    """Whether process ``pid`` is alive (a zombie has exited)."""
    if os.path.isdir("/proc"):
        try:
            with open(f"/proc/{pid}/stat") as stat:
                return stat.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
        except OSError:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _tell_terminal(message: str) -> None:
    """Write ``message`` to the terminal the job was started from (``/dev/tty``), else to
    standard error: after a Ctrl-C Open MPI's mpiexec no longer forwards the processes'
    output."""
    try:
        with open("/dev/tty", "w") as terminal:
            print(message, file=terminal, flush=True)
    except OSError:
        print(message, file=sys.stderr, flush=True)
