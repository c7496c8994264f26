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
normalisation normalises over the whole batch: each layer gathers every process's per-channel
statistics (one small gather forward, one backward), so its output, gradients and running
statistics are one process's. Other layers that couple the samples are refused
(:class:`DistributedError`) rather than trained differently.

The gradients travel through host NumPy buffers, which works on every backend. With an MPI
that reports CUDA support (:func:`mpi_cuda_support`; refused otherwise), ``cuda_aware=True``
(or ``PORTACNN_CUDA_AWARE_MPI=1``) hands CuPy device buffers to MPI's blocking collectives
directly. Each process takes GPU ``local_rank % device count`` (:func:`rank_device`, the
node-local rank from MPI's shared-memory split), touching no other GPU, and makes it current.

Before any collective work, every call (``DataParallel(model)``, ``fit``, ``evaluate``,
``predict``) checks that all processes bring the same model, settings and data
(:mod:`.agreement`): a difference raises :class:`DistributedError` on every process, naming the
setting, instead of a hang (processes waiting in different calls) or replicas that drift apart.
Every wait for the other processes is bounded (``$PORTACNN_MPI_TIMEOUT``, default 300 s;
:class:`DistributedTimeoutError`) and stops as soon as another process reports a failure
(:class:`PeerFailedError`).

Only rank 0 prints progress and writes files (:meth:`DataParallel.save`; the CLI's plots). An
uncaught exception on any process ends the whole job (:func:`abort_on_error`): when every
process fails, rank 0 prints the error once and all exit normally; otherwise the job ends with
``MPI_Abort`` (:mod:`.ending`).

The package has five modules: :mod:`.mpi`, the MPI world (is this a launched job, the
communicator, each process's rank and device, bounded waits); :mod:`.agreement`, what the
processes must agree on; :mod:`.data_parallel`, the replicas (:class:`DataParallel`);
:mod:`.coupled_layers`, the layers that couple a batch's samples (batch normalisation); and
:mod:`.ending`, how a job ends on a failure or an interrupt. Importing the package does not
import mpi4py; :func:`world` does, on first use.
"""

from .data_parallel import CUDA_AWARE_VARIABLE, DataParallel, shard_bounds
from .ending import Terminated, abort, abort_on_error, end_together, interrupt_on_sigterm
from .mpi import (MPI_ENVIRONMENT, TIMEOUT_VARIABLE, DistributedError, DistributedTimeoutError,
                  PeerFailedError, launched_by_mpi, local_rank, mpi_cuda_support, rank_device,
                  root_first,
                  silence_unless_root, wait_timeout, world)

__all__ = ["DataParallel", "DistributedError", "DistributedTimeoutError", "MPI_ENVIRONMENT",
           "PeerFailedError", "TIMEOUT_VARIABLE", "Terminated", "abort", "abort_on_error",
           "end_together", "interrupt_on_sigterm", "launched_by_mpi", "local_rank",
           "mpi_cuda_support", "rank_device", "root_first", "shard_bounds", "silence_unless_root", "wait_timeout",
           "world"]
