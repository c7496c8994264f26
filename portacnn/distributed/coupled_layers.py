"""Layers that couple the samples of a batch, under data parallelism: which ones
:class:`~.data_parallel.DataParallel` can split, and batch normalisation over the whole batch.

Batch normalisation normalises with statistics of the whole batch, every process's rows, as one
process does (what PyTorch's ``SyncBatchNorm`` does): each layer gathers the processes'
per-channel count, mean and sum of squared deviations forward, and two sums backward
(:func:`portacnn.kernels.batchnorm.batchnorm_forward`'s ``gather``). R processes then train
like one on the same global batch, as without batch normalisation, and every process computes
the same running statistics. Dropout draws whole-batch masks (``_WholeBatchRNG``).
"""

from __future__ import annotations

import contextlib

from ..layers import BatchNorm1D, BatchNorm2D, Dropout
from .mpi import DistributedError

__all__ = ["refuse_unsplittable", "whole_batch_statistics"]

SPLITTABLE = (Dropout, BatchNorm1D, BatchNorm2D)


def refuse_unsplittable(model) -> None:
    """Raise :class:`DistributedError` naming each layer of ``model`` that couples the samples
    of a batch and has no data-parallel form (any but batch normalisation and dropout)."""
    coupled = [f"{i} ({layer.name})" for i, layer in enumerate(model.layers)
               if not layer.samples_independent and not isinstance(layer, SPLITTABLE)]
    if coupled:
        raise DistributedError(
            f"layer {', '.join(coupled)} couples the samples of a batch and has no "
            "data-parallel form (batch normalisation and dropout have one), so rank shards "
            "would not train like one process: train this model in one process")


@contextlib.contextmanager
def whole_batch_statistics(model, allgather):
    """Within the block, the batch normalisation layers of ``model`` normalise over every
    process's rows in training, their statistics gathered by ``allgather`` ((k, C) -> (R, k, C),
    :meth:`~.data_parallel.DataParallel.allgather`); afterwards over their input alone again."""
    norms = [layer for layer in model.layers if isinstance(layer, (BatchNorm1D, BatchNorm2D))]
    for layer in norms:
        layer.gather_statistics = allgather
    try:
        yield
    finally:
        for layer in norms:
            layer.gather_statistics = None
