"""The replicas of a data-parallel job: :class:`DataParallel` trains, evaluates and predicts
with rank shards of every batch (:func:`shard_bounds`) and sums the gradients in rank order;
dropout layers draw whole-batch masks (:class:`_WholeBatchRNG`) and batch normalisation
gathers every process's statistics (:mod:`.coupled_layers`). Each call first checks that
every process brings the same model, settings and data (:mod:`.agreement`), and every wait for
the other processes is bounded (:func:`.mpi.wait`). The package docstring
(:mod:`portacnn.distributed`) describes the algorithm step by step; the MPI world it runs in is
:mod:`.mpi`, how a job ends when a process fails :mod:`.ending`.
"""

from __future__ import annotations

import inspect
import math
import os

import numpy as np  # host buffers for MPI

from .. import training
from ..backends import to_numpy
from ..layers import Dropout
from ..optim import SGD, get_optimizer
from . import agreement, coupled_layers, ending, mpi
from .mpi import DistributedError

__all__ = ["DataParallel", "shard_bounds"]

CUDA_AWARE_VARIABLE = "PORTACNN_CUDA_AWARE_MPI"


def shard_bounds(rows: int, size: int, rank: int) -> tuple[int, int]:
    """The rows ``[rows*rank // size, rows*(rank+1) // size)`` of a batch of ``rows`` that
    process ``rank`` of ``size`` computes: in rank order, sizes differing by at most one."""
    return rows * rank // size, rows * (rank + 1) // size


# --- the replicas ---------------------------------------------------------------------------
class DataParallel:
    """A model replicated on every process of ``comm``, trained on rank shards of each batch.

    Args:
        model: a built :class:`~portacnn.Sequential` or :class:`~portacnn.Model`, the same
            architecture on every process
            (its parameters and buffers are replaced by rank 0's here).
        comm: an mpi4py communicator (default ``MPI.COMM_WORLD``).
        cuda_aware: hand device buffers to MPI's blocking collectives without a host copy
            (CuPy arrays and an MPI that reports CUDA support,
            :func:`~portacnn.distributed.mpi_cuda_support`); default
            ``$PORTACNN_CUDA_AWARE_MPI == "1"``.
        reduction: ``"ordered"`` (default; the sum in rank order, see
            :mod:`portacnn.distributed`) or ``"mpi"`` (``MPI_Allreduce``: fewer bytes, the MPI
            library's order of addition).
        fail_fast: install :func:`~portacnn.distributed.abort_on_error` (default True).
        timeout: the longest wait, in seconds, for the other processes in one collective call
            (0: no bound); default ``$PORTACNN_MPI_TIMEOUT``, else 300
            (:func:`~portacnn.distributed.wait_timeout`).

    Raises:
        DistributedError: ``cuda_aware`` with an MPI that does not report CUDA support; a
            layer couples the samples of a batch in a way that has no data-parallel form (batch
            normalisation and dropout have one), or the
            processes hold different models (architecture, layer settings, shapes, dtype) or
            ask for different reductions.

    Batch normalisation layers normalise over the whole batch, every process's rows, as in one
    process: during ``fit`` each gathers the processes' statistics (:meth:`allgather`), once
    forward and once backward a step, so their running statistics are the same everywhere.

    ``fit`` / ``evaluate`` / ``predict`` take :class:`~portacnn.Sequential`'s arguments; each
    process must make the same calls with the same settings and data (each reads only its own
    rows of it): each call checks this first (:mod:`.agreement`) and raises
    :class:`DistributedError`, on every process, naming the first setting that differs.
    """

    def __init__(self, model, comm=None, *, cuda_aware: bool | None = None,
                 reduction: str = "ordered", fail_fast: bool = True,
                 timeout: float | None = None):
        if reduction not in ("ordered", "mpi"):
            raise ValueError(f"reduction must be 'ordered' or 'mpi', got {reduction!r}")
        model.require_built()
        self.model = model
        self.comm = comm if comm is not None else mpi.world()
        self.rank, self.size = self.comm.rank, self.comm.size
        self.is_root = self.rank == 0
        self.reduction = reduction
        self.timeout = mpi.wait_timeout(timeout)
        self.cuda_aware = (os.environ.get(CUDA_AWARE_VARIABLE) == "1" if cuda_aware is None
                           else bool(cuda_aware))
        if self.cuda_aware and not mpi.mpi_cuda_support():
            asked = (f"{CUDA_AWARE_VARIABLE}=1" if cuda_aware is None else "cuda_aware=True")
            raise DistributedError(
                f"{asked} asks to hand device buffers to MPI, but this MPI does not report CUDA "
                f"support ({mpi._mpi().Get_library_version().splitlines()[0].strip()}), so it "
                "would crash on the first one (the PyPI Open MPI of portacnn[mpi] is built "
                f"without CUDA): drop {asked} (the gradients then go through host buffers, which "
                "works with any MPI), or run on an MPI built with CUDA (Open MPI configured "
                "--with-cuda, MPICH --with-cuda) with mpi4py built against it")
        self._batch = None          # (start, stop): the batch whose shard is being computed
        if fail_fast:
            ending.abort_on_error(self.comm)
        coupled_layers.refuse_unsplittable(model)
        self._agree("DataParallel(model)", {"model": agreement.model_settings(model),
                                            "reduction": reduction})
        self._broadcast_state()
        self._share_dropout_masks()

    def __repr__(self) -> str:
        return (f"DataParallel(rank {self.rank} of {self.size}, {self.reduction} reduction, "
                f"{'device' if self.cuda_aware else 'host'} buffers, {self.model!r})")

    # --- set-up ---------------------------------------------------------------------------
    def _agree(self, call: str, settings: dict) -> None:
        """Raise on every process unless all pass the same ``settings`` (``{name: value}``,
        compared as :func:`.agreement.setting` makes them) to ``call``."""
        mine = {"call": call, **{name: agreement.setting(value)
                                 for name, value in settings.items()}}
        everyone = mpi.allgather_object(self.comm, mine, f"the settings check of {call}",
                                        self.timeout)
        problem = agreement.difference(everyone)
        if problem:
            raise DistributedError(problem)

    def _broadcast_state(self) -> None:
        """Replace every parameter and buffer with rank 0's."""
        for slot in (*self.model.parameters(), *self.model.buffers()):
            slot.value = self._broadcast_array(slot.value, "broadcasting the parameters")

    def _broadcast_array(self, value, what: str):
        """Rank 0's ``value`` (a device array of the same shape and dtype everywhere)."""
        host = np.array(to_numpy(value), copy=True, order="C")
        mpi.wait(self.comm.Ibcast(host, root=0), self.comm, what, self.timeout)
        return self.model.backend.asarray(host)

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
                host.bit_generator.state = mpi.broadcast_object(
                    self.comm, host.bit_generator.state, "sharing the dropout generators",
                    self.timeout)

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
        ``reduction="ordered"`` gathers the R buffers and adds them in rank order.

        Device buffers (``cuda_aware``) go to MPI's blocking collectives, the ones its CUDA
        support covers (Open MPI's does not cover the non-blocking ones); a bounded barrier
        first (:func:`.mpi.wait`) keeps a missing process from hanging the others there."""
        backend = self.model.backend
        what = "the gradient sum"
        with backend.activate():
            if self.cuda_aware:
                if self.reduction == "ordered":
                    return _rank_order_sum(self._allgather_on_device(flat, what), self.size)
                self._device_buffers_ready(what)
                total = backend.xp.empty(tuple(flat.shape), dtype=flat.dtype,
                                         device=backend.device)
                self.comm.Allreduce(flat, total, op=mpi._mpi().SUM)
                return total
            if self.reduction == "ordered":
                return backend.asarray(_rank_order_sum(self._allgather_on_host(flat, what),
                                                       self.size))
            send = np.ascontiguousarray(to_numpy(flat))
            total = np.empty(send.shape, dtype=send.dtype)
            mpi.wait(self.comm.Iallreduce(send, total, op=mpi._mpi().SUM), self.comm, what,
                     self.timeout)
            return backend.asarray(total)

    def allgather(self, array):
        """Every process's ``array`` (a device array of the same shape on each), stacked in
        rank order: (R, *shape) on this process's device, the same on every process. Batch
        normalisation's per-channel statistics travel this way."""
        backend = self.model.backend
        xp = backend.xp
        what = "gathering the batch statistics"
        with backend.activate():
            flat = xp.reshape(array, (-1,))
            gathered = (self._allgather_on_device(flat, what) if self.cuda_aware
                        else backend.asarray(self._allgather_on_host(flat, what)))
            return xp.reshape(gathered, (self.size, *array.shape))

    def _allgather_on_host(self, flat, what: str):
        """(R, S) host array: every process's 1-d device array ``flat`` (S,), in rank order."""
        send = np.ascontiguousarray(to_numpy(flat))
        gathered = np.empty((self.size, send.shape[0]), dtype=send.dtype)
        mpi.wait(self.comm.Iallgather(send, gathered), self.comm, what, self.timeout)
        return gathered

    def _allgather_on_device(self, flat, what: str):
        """:meth:`_allgather_on_host` with device buffers (inside ``backend.activate()``)."""
        backend = self.model.backend
        self._device_buffers_ready(what)
        gathered = backend.xp.empty((self.size, flat.shape[0]), dtype=flat.dtype,
                                    device=backend.device)
        self.comm.Allgather(flat, gathered)
        return gathered

    def _device_buffers_ready(self, what: str) -> None:
        self.model.backend.synchronize()        # MPI reads the buffer outside the stream
        mpi.wait(self.comm.Ibarrier(), self.comm, what, self.timeout)

    def sum(self, values: list[float]) -> list[float]:
        """Each of ``values`` (Python floats) summed over the processes in rank order."""
        self._batch = None
        mine = np.array(values, dtype=np.float64)
        everyone = np.empty((self.size, len(values)), dtype=np.float64)
        mpi.wait(self.comm.Iallgather(mine, everyone), self.comm, "the sum of the losses",
                 self.timeout)
        return [sum(float(v) for v in everyone[:, k]) for k in range(len(values))]

    def gather(self, part):
        """Every process's rows of an output (rows, ...), concatenated in rank order, on every
        process's device."""
        self._batch = None
        part = np.ascontiguousarray(to_numpy(part))
        rows = np.empty(self.size, dtype=np.int64)
        mpi.wait(self.comm.Iallgather(np.array([part.shape[0]], dtype=np.int64), rows),
                 self.comm, "gathering the predictions", self.timeout)
        row_size = math.prod(part.shape[1:])
        whole = np.empty((int(rows.sum()), *part.shape[1:]), dtype=part.dtype)
        mpi.wait(self.comm.Iallgatherv(part, [whole, [int(r) * row_size for r in rows]]),
                 self.comm, "gathering the predictions", self.timeout)
        return self.model.backend.asarray(whole)

    def from_root(self, value):
        """Rank 0's ``value`` (a small picklable object, such as whether a callback stopped
        training) on every process."""
        return mpi.broadcast_object(self.comm, value, "rank 0's decision to stop", self.timeout)

    # --- the model's interface, across the processes ------------------------------------
    def fit(self, x, y, epochs: int = 1, batch_size: int = 32, optimizer="sgd", *,
            seed: int | None = 0, **kwargs) -> training.History:
        """:meth:`Sequential.fit <portacnn.Sequential.fit>` with ``batch_size`` the global
        batch, split across the processes. ``seed=None`` draws one seed on rank 0 for all.
        Only rank 0 shows progress; every process returns the same History.

        First every process checks that all pass the same data, epochs, batch size, seed,
        optimizer (configuration, steps and the shapes of its state) and other arguments,
        defaults filled in (``verbose`` and ``file`` may differ: only rank 0 prints); then
        the optimizer's state becomes rank 0's, as the parameters did."""
        if optimizer is None:     # as training.fit: the model's (from load, an earlier fit)
            optimizer = self.model.optimizer if self.model.optimizer is not None else SGD(0.01)
        optimizer = get_optimizer(optimizer)
        call = inspect.signature(training.fit).bind(self.model, x, y, epochs, batch_size,
                                                    optimizer, seed=seed, **kwargs)
        call.apply_defaults()                       # a default and its value passed agree
        self._agree("DataParallel.fit", {name: value for name, value in call.arguments.items()
                                         if name not in ("model", "replicas", "verbose", "file",
                                                         "threads")})
        for name in sorted(optimizer.state):        # the same order on every process
            slots = optimizer.state[name]
            for slot in sorted(slots):
                slots[slot] = self._broadcast_array(slots[slot], "broadcasting the optimizer")
        if seed is None:
            seed = mpi.broadcast_object(self.comm, int(np.random.SeedSequence().entropy % 2**63),
                                        "sharing the seed", self.timeout)
        with coupled_layers.whole_batch_statistics(self.model, self.allgather):
            return training.fit(self.model, x, y, epochs, batch_size, optimizer, seed=seed,
                                replicas=self, **kwargs)

    def evaluate(self, x, y, batch_size: int = 256):
        """Mean loss and accuracy over ``(x, y)``, each process evaluating its shard of rows
        (after checking that every process passes the same data)."""
        self._agree("DataParallel.evaluate", {"x": x, "y": y})
        return training.evaluate(self.model, x, y, batch_size, replicas=self)

    def predict(self, x, batch_size: int = 256):
        """The model's predictions for ``x`` (N, classes) on every process, each process
        computing its shard of rows (after checking that every process passes the same
        ``x``)."""
        self._agree("DataParallel.predict", {"x": x})
        return training.predict(self.model, x, batch_size, replicas=self)

    def save(self, path, **kwargs):
        """Rank 0 writes the model (:meth:`Sequential.save <portacnn.Sequential.save>`); every
        process returns once the file is written."""
        if self.is_root:
            self.model.save(path, **kwargs)
        mpi.wait(self.comm.Ibarrier(), self.comm, "save (waiting for rank 0 to write)",
                 self.timeout)
        return path


def _rank_order_sum(gathered, size: int):
    """Rows 0 + 1 + ... + size-1 of ``gathered`` (size, S), added in that order."""
    total = gathered[0, ...]
    for r in range(1, size):
        total = total + gathered[r, ...]
    return total


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
