"""Data parallelism over MPI: ``mpiexec -n N python -m portacnn train``, and :class:`DataParallel`.

Every process (an MPI *rank*) holds a replica of the model and the whole data set; each computes
its shard of every batch, and all apply the same update::

    # mpiexec -n 4 python my_training.py
    from portacnn import distributed, models
    from portacnn.optim import SGD

    model = models.lenet5(device=distributed.rank_device("gpu"), seed=0)
    dp = distributed.DataParallel(model)             # parameters broadcast from rank 0
    history = dp.fit(x, y, epochs=10, batch_size=256, optimizer=SGD(0.02, momentum=0.9))
    loss, accuracy = dp.evaluate(x_test, y_test)
    dp.save("lenet5.safetensors")                    # rank 0 writes

One training step, with R processes and a global batch of B rows:

1. Every process shuffles with the same seeded generator, so all agree on each batch's rows
   whatever R is.
2. Rank r computes rows ``[B*r // R, B*(r+1) // R)`` of the batch: its shard of b_r rows.
3. Its loss is the shard's mean weighted by ``b_r / B``
   (:func:`portacnn.training.accumulate_gradients`, the same weighting as the CPU's chunks),
   so the R shares add up to the gradient of the batch's mean loss.
4. The gradients, one flat buffer of S values, are summed in rank order on every process:
   each gathers all R buffers (``MPI_Allgather``) and adds them 0 + 1 + ... + R-1. The sum never
   depends on which message arrives first, and every process computes the same bits, so the
   replicas never drift apart. Each process receives (R-1)·S values a step;
   ``reduction="mpi"`` uses ``MPI_Allreduce`` instead (about 2·S, less for many processes),
   whose order of addition is the MPI library's choice.
5. Every process applies the same optimizer update.

So R processes on batch B take the one-process step on batch B, up to float rounding (the
additions are grouped differently). Dropout masks are drawn for the whole batch from the same
generator on every process and each keeps its shard's rows: the same masks whatever R is. Batch
normalisation computes statistics over the batch, which would couple the shards: models with
such layers are refused (:class:`DistributedError`) rather than trained differently.

The gradients travel through host NumPy buffers, which works on every backend. With a
CUDA-aware MPI, ``cuda_aware=True`` (or ``PORTACNN_CUDA_AWARE_MPI=1``) hands CuPy device buffers
to MPI directly. Each process takes GPU ``local_rank % device count``
(:func:`rank_device`): the node-local rank, from MPI's shared-memory split.

Only rank 0 prints progress and writes files (:meth:`DataParallel.save`; the CLI's plots). An
uncaught exception on any process ends the whole job (:func:`abort_on_error`): the others would
otherwise wait for it forever in their next collective call.

Importing this module does not import mpi4py; :func:`world` does, on first use.
"""

from __future__ import annotations

import math
import os
import sys
import time

import numpy as np  # host buffers for MPI

from . import training
from .backends import Backend, get_backend, to_numpy
from .layers import Dropout

__all__ = ["DataParallel", "DistributedError", "MPI_ENVIRONMENT", "abort", "abort_on_error",
           "launched_by_mpi", "local_rank", "rank_device", "root_first", "shard_bounds",
           "silence_unless_root", "world"]

# Variables an MPI launcher sets in each process it starts: Open MPI, MPICH / Intel MPI (Hydra),
# PMIx (Open MPI 5, Slurm's srun --mpi=pmix), MVAPICH.
MPI_ENVIRONMENT = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MV2_COMM_WORLD_SIZE")

CUDA_AWARE_VARIABLE = "PORTACNN_CUDA_AWARE_MPI"


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


def shard_bounds(rows: int, size: int, rank: int) -> tuple[int, int]:
    """The rows ``[rows*rank // size, rows*(rank+1) // size)`` of a batch of ``rows`` that
    process ``rank`` of ``size`` computes: in rank order, sizes differing by at most one."""
    return rows * rank // size, rows * (rank + 1) // size


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


# --- the replicas ---------------------------------------------------------------------------
class DataParallel:
    """A model replicated on every process of ``comm``, trained on rank shards of each batch.

    Args:
        model: a built :class:`~portacnn.Sequential`, the same architecture on every process
            (its parameters and buffers are replaced by rank 0's here).
        comm: an mpi4py communicator (default ``MPI.COMM_WORLD``).
        cuda_aware: hand device buffers to MPI without a host copy (an MPI built with CUDA
            support and CuPy arrays); default ``$PORTACNN_CUDA_AWARE_MPI == "1"``.
        reduction: ``"ordered"`` (default; the sum in rank order, see the module docstring) or
            ``"mpi"`` (``MPI_Allreduce``: fewer bytes, the MPI library's order of addition).
        fail_fast: install :func:`abort_on_error` (default True).

    Raises:
        DistributedError: a layer couples the samples of a batch (batch normalisation), or the
            processes hold models of different shapes.

    ``fit`` / ``evaluate`` / ``predict`` take :class:`~portacnn.Sequential`'s arguments; each
    process must pass the same data (each reads only its own rows of it).
    """

    def __init__(self, model, comm=None, *, cuda_aware: bool | None = None,
                 reduction: str = "ordered", fail_fast: bool = True):
        if reduction not in ("ordered", "mpi"):
            raise ValueError(f"reduction must be 'ordered' or 'mpi', got {reduction!r}")
        model.require_built()
        self.model = model
        self.comm = comm if comm is not None else world()
        self.rank, self.size = self.comm.rank, self.comm.size
        self.is_root = self.rank == 0
        self.reduction = reduction
        self.cuda_aware = (os.environ.get(CUDA_AWARE_VARIABLE) == "1" if cuda_aware is None
                           else bool(cuda_aware))
        self._batch = None          # (start, stop): the batch whose shard is being computed
        if fail_fast:
            abort_on_error(self.comm)
        coupled = [f"{i} ({layer.name})" for i, layer in enumerate(model.layers)
                   if not layer.samples_independent and not isinstance(layer, Dropout)]
        if coupled:
            raise DistributedError(
                f"layer {', '.join(coupled)} computes statistics over the whole batch, so rank "
                "shards would not train like one process: train this model in one process, or "
                "use a model without batch normalisation")
        self._agree("model", [(slot.name, slot.shape)
                              for slot in (*model.parameters(), *model.buffers())])
        self._broadcast_state()
        self._share_dropout_masks()

    def __repr__(self) -> str:
        return (f"DataParallel(rank {self.rank} of {self.size}, {self.reduction} reduction, "
                f"{'device' if self.cuda_aware else 'host'} buffers, {self.model!r})")

    # --- set-up ---------------------------------------------------------------------------
    def _agree(self, what: str, mine) -> None:
        """Raise on every process unless all hold the same ``mine`` (a small picklable value)."""
        everyone = self.comm.allgather(mine)
        differ = [r for r, theirs in enumerate(everyone) if theirs != everyone[0]]
        if differ:
            raise DistributedError(
                f"the processes hold different {what}s (rank {differ[0]} differs from rank 0): "
                f"every process must build the same model and load the same data")

    def _broadcast_state(self) -> None:
        """Replace every parameter and buffer with rank 0's."""
        backend = self.model.backend
        for slot in (*self.model.parameters(), *self.model.buffers()):
            host = np.array(to_numpy(slot.value), copy=True, order="C")
            self.comm.Bcast(host, root=0)
            slot.value = backend.asarray(host)

    def _share_dropout_masks(self) -> None:
        """Give each dropout layer a generator that draws whole-batch masks, in rank 0's
        random state."""
        shared = {}
        for layer in self.model.layers:
            if isinstance(layer, Dropout):
                rng = layer.rng.rng if isinstance(layer.rng, _WholeBatchRNG) else layer.rng
                shared[id(rng)] = rng
                layer.rng = _WholeBatchRNG(rng, self)
        for rng in shared.values():             # the same order on every process
            host = getattr(rng, "host", None)
            if host is not None:
                host.bit_generator.state = self.comm.bcast(host.bit_generator.state, root=0)

    def _fingerprint(self, arr):
        """Shape, dtype and the sum of up to 64 evenly spaced rows of a data array."""
        step = max(1, arr.shape[0] // 64)
        sample = to_numpy(arr[::step, ...]).astype(np.float64)
        return tuple(arr.shape), str(arr.dtype), float(sample.sum())

    # --- what training.fit / evaluate / predict call --------------------------------------
    def shard(self, start: int, stop: int) -> tuple[int, int]:
        """This process's rows of the batch ``[start, stop)`` (see :func:`shard_bounds`). The
        batch is remembered until its gradients or sums are taken, for the dropout masks."""
        self._batch = (start, stop)
        lo, hi = shard_bounds(stop - start, self.size, self.rank)
        return start + lo, start + hi

    def sum_gradients(self, parameters) -> None:
        """Replace each parameter's ``grad`` (this shard's share) by the sum over the processes
        of the shares, added in rank order; every process gets the same bits."""
        self._batch = None
        params = [p for p in parameters if p.grad is not None]
        if not params:
            return
        xp = self.model.backend.xp
        flat = xp.concat([xp.reshape(p.grad, (-1,)) for p in params])
        summed = self.allreduce(flat)
        offset = 0
        for p in params:
            shape = tuple(p.grad.shape)
            size = math.prod(shape)
            p.grad = xp.reshape(summed[offset:offset + size], shape)
            offset += size

    def allreduce(self, flat):
        """The sum over the processes of the 1-d device array ``flat`` (S,), on every process:
        ``reduction="ordered"`` gathers the R buffers and adds them in rank order."""
        backend = self.model.backend
        if self.cuda_aware:
            send = flat
            backend.synchronize()               # MPI reads the buffer outside the stream
        else:
            send = np.ascontiguousarray(to_numpy(flat))
        if self.reduction == "mpi":
            total = _empty_like(send, (send.shape[0],), backend, self.cuda_aware)
            _wait(self.comm.Iallreduce(send, total, op=_mpi().SUM))
        else:
            gathered = _empty_like(send, (self.size, send.shape[0]), backend, self.cuda_aware)
            _wait(self.comm.Iallgather(send, gathered))
            total = gathered[0, ...]
            for r in range(1, self.size):
                total = total + gathered[r, ...]
        return total if self.cuda_aware else backend.asarray(total)

    def sum(self, values: list[float]) -> list[float]:
        """Each of ``values`` (Python floats) summed over the processes in rank order."""
        self._batch = None
        everyone = self.comm.allgather([float(v) for v in values])
        return [sum(row[k] for row in everyone) for k in range(len(values))]

    def gather(self, part):
        """Every process's rows of an output (rows, ...), concatenated in rank order, on every
        process's device."""
        self._batch = None
        parts = self.comm.allgather(np.ascontiguousarray(to_numpy(part)))
        return self.model.backend.asarray(np.concatenate(parts, axis=0))

    # --- the model's interface, across the processes ------------------------------------
    def fit(self, x, y, epochs: int = 1, batch_size: int = 32, optimizer="sgd", *,
            seed: int | None = 0, **kwargs) -> training.History:
        """:meth:`Sequential.fit <portacnn.Sequential.fit>` with ``batch_size`` the global
        batch, split across the processes. ``seed=None`` draws one seed on rank 0 for all.
        Only rank 0 shows progress; every process returns the same History."""
        self._agree("training data", [self._fingerprint(x), self._fingerprint(y)])
        if seed is None:
            seed = self.comm.bcast(int(np.random.SeedSequence().entropy % 2**63), root=0)
        return training.fit(self.model, x, y, epochs, batch_size, optimizer, seed=seed,
                            replicas=self, **kwargs)

    def evaluate(self, x, y, batch_size: int = 256):
        """Mean loss and accuracy over ``(x, y)``, each process evaluating its shard of rows."""
        return training.evaluate(self.model, x, y, batch_size, replicas=self)

    def predict(self, x, batch_size: int = 256):
        """The model's predictions for ``x`` (N, classes) on every process, each process
        computing its shard of rows."""
        return training.predict(self.model, x, batch_size, replicas=self)

    def save(self, path, **kwargs):
        """Rank 0 writes the model (:meth:`Sequential.save <portacnn.Sequential.save>`); every
        process returns once the file is written."""
        if self.is_root:
            self.model.save(path, **kwargs)
        self.comm.Barrier()
        return path


def _wait(request) -> None:
    """Wait for a non-blocking MPI operation, giving the core away between polls. MPI's own
    blocking wait spins; on a machine shared with other work the spinning process would take
    the core that a slower process of the same step needs (see docs/distributed.md)."""
    while not request.Test():
        _yield()


_yield = getattr(os, "sched_yield", lambda: time.sleep(0))


def _empty_like(buffer, shape, backend, on_device: bool):
    if on_device:
        return backend.xp.empty(shape, dtype=buffer.dtype, device=backend.device)
    return np.empty(shape, dtype=buffer.dtype)


class _WholeBatchRNG:
    """A dropout layer's generator under data parallelism: inside a training step it draws the
    mask of the whole batch, as one process would, and returns this process's rows, so the
    masks do not depend on the number of processes. Outside one it draws as asked."""

    def __init__(self, rng, replicas: DataParallel):
        self.rng = rng
        self.replicas = replicas

    @property
    def backend(self):
        return self.rng.backend

    @backend.setter
    def backend(self, backend):             # Dropout.to moves the wrapped stream
        self.rng.backend = backend

    def bernoulli(self, shape, keep: float, dtype):
        batch = self.replicas._batch
        if batch is not None:
            start, stop = batch
            lo, hi = shard_bounds(stop - start, self.replicas.size, self.replicas.rank)
            if shape[0] == hi - lo:
                return self.rng.bernoulli((stop - start, *shape[1:]), keep, dtype)[lo:hi, ...]
        return self.rng.bernoulli(shape, keep, dtype)
