"""The programs tests/test_distributed.py runs under ``mpiexec -n 2`` (not a test module).

    python tests/mpi_worker.py equivalence OUTDIR   # data parallel against one process
    python tests/mpi_worker.py checks OUTDIR        # what the processes must agree on
    python tests/mpi_worker.py fail                 # rank 1 raises in its third step
    python tests/mpi_worker.py same_error           # every rank raises the same error

``equivalence`` trains each case twice on every process: data-parallel (DataParallel.fit) and
alone (the plain one-process fit on the same global batches), then rank 0 writes OUTDIR/
results.json with the largest differences. The data-parallel replicas are seeded differently on
each rank, so they match the one-process model only if rank 0's parameters and dropout state
are broadcast. Each process saves the data-parallel model from its own directory OUTDIR/rank<r>,
so the test can see which process wrote.

``checks`` makes DataParallel calls whose model, settings or data differ between the ranks, a
wait that outlasts its bound, and a fit whose optimizers hold different state; rank 0 writes
OUTDIR/checks.json with what each rank raised.
"""

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from portacnn import (Add, AvgPool2D, BatchNorm1D, BatchNorm2D, Conv2D, Dense, Dropout, Flatten,
                      Input, Layer, Model, RandomCropFlip, ReLU, Sequential, Tanh, distributed)
from portacnn.backends import to_numpy
from portacnn.callbacks import Callback, ModelCheckpoint
from portacnn.optim import SGD, Adam

N, BATCH, EPOCHS = 201, 100, 3     # batches of 100, 100 and 1 rows: the last leaves rank 0 empty


def network(dtype, dropout, seed=7, activation=Tanh, rate=0.5, norms=(), graph=False):
    """Conv - act - pool - dense - ReLU - dense; ``norms`` "2d" / "1d" put batch normalisation
    after the convolution / the first dense layer. ``graph``: a graph model (portacnn.Model)
    instead, conv - BN - act, a residual block, pool - dense."""
    if graph:
        x = Input((1, 8, 8))
        h = activation()(BatchNorm2D()(Conv2D(4, 3, padding=1)(x)))
        h = ReLU()(Add()([Conv2D(4, 3, padding=1)(h), h]))
        return Model(x, Dense(10)(Flatten()(AvgPool2D(2)(h))), dtype=dtype, seed=seed)
    bn2 = [BatchNorm2D()] if "2d" in norms else []
    bn1 = [BatchNorm1D()] if "1d" in norms else []
    layers = [Conv2D(4, 3, padding=1), *bn2, activation(), AvgPool2D(2), Flatten(), Dense(16),
              *bn1, ReLU()]
    if dropout:
        layers.append(Dropout(rate))
    return Sequential(layers + [Dense(10)], input_shape=(1, 8, 8), dtype=dtype, seed=seed)


def data(dtype):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, 1, 8, 8)).astype(dtype)
    y = rng.integers(0, 10, N)
    return x, y


def largest_difference(a_model, b_model):
    """max |a - b| / max(max |b|, 1) over the parameters and buffers."""
    worst = 0.0
    for a, b in zip(a_model.parameters() + a_model.buffers(),
                    b_model.parameters() + b_model.buffers()):
        a, b = to_numpy(a.value), to_numpy(b.value)
        worst = max(worst, float(np.max(np.abs(a - b))) / max(float(np.max(np.abs(b))), 1.0))
    return worst


def equivalence(outdir: Path) -> None:
    comm = distributed.world()
    results = {"size": comm.size}
    # batchnorm: statistics over shards of 33 and 34 rows; batchnorm2d_empty_shard: the last
    # batch of 1 row leaves rank 0 no rows (the 2-d norm still has 16 values a channel)
    for name, dtype, dropout, norms, batch, augment in (
            ("float64", "float64", False, (), BATCH, None),
            ("float32", "float32", False, (), BATCH, None),
            ("dropout", "float64", True, (), BATCH, None),
            ("augment", "float64", False, (), BATCH, RandomCropFlip(2)),
            ("batchnorm", "float64", False, ("2d", "1d"), 67, None),
            ("batchnorm2d_empty_shard", "float64", False, ("2d",), BATCH, None),
            ("graph", "float64", False, (), 67, None)):      # last: saved, and fit with callbacks
        x, y = data(dtype)
        graph = name == "graph"
        alone = network(dtype, dropout, norms=norms, graph=graph)
        history_alone = alone.fit(x, y, epochs=EPOCHS, batch_size=batch,
                                  optimizer=SGD(0.05, momentum=0.9), seed=3, verbose=0,
                                  augment=augment)
        dp = distributed.DataParallel(network(dtype, dropout, seed=7 + 1000 * comm.rank,
                                              norms=norms, graph=graph))
        history = dp.fit(x, y, epochs=EPOCHS, batch_size=batch,
                         optimizer=SGD(0.05, momentum=0.9), seed=3, verbose=2, augment=augment)
        loss, acc = dp.evaluate(x, y)
        loss_alone, acc_alone = alone.evaluate(x, y)
        probs = to_numpy(dp.predict(x, batch_size=50))
        checksums = comm.allgather([float(np.sum(to_numpy(p.value).astype(np.float64) ** 2))
                                    for p in dp.model.parameters() + dp.model.buffers()])
        results[name] = {
            "parameters": largest_difference(dp.model, alone),
            "moved": largest_difference(dp.model, network(dtype, dropout, norms=norms,
                                                          graph=graph)),
            "loss_history": max(abs(a - b) for a, b in zip(history["loss"],
                                                             history_alone["loss"])),
            "evaluate_loss": abs(loss - loss_alone), "evaluate_accuracy": abs(acc - acc_alone),
            "predict": float(np.max(np.abs(probs - to_numpy(alone.predict(x))))),
            "predict_rows": probs.shape[0],
            "ranks_identical": all(c == checksums[0] for c in checksums),
        }
    home = outdir / f"rank{comm.rank}"
    home.mkdir(parents=True, exist_ok=True)
    os.chdir(home)
    dp.save("model.safetensors")
    results["callbacks"] = stopping_together(comm, dp, x, y)
    if comm.rank == 0:
        (outdir / "results.json").write_text(json.dumps(results, indent=1))


class AskToStop(Callback):
    """Rank r asks to stop after epoch 1 - r: the ranks disagree, and rank 0's word holds."""

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1 - distributed.world().rank:
            self.model.stop_training = True


def stopping_together(comm, dp, x, y) -> dict:
    """A fit with callbacks: the epochs each rank ran (rank 0 decides when all stop) and the
    checkpoints written (rank 0 only, into its own directory)."""
    history = dp.fit(x, y, epochs=4, batch_size=BATCH, optimizer=SGD(0.05), verbose=0,
                     callbacks=[AskToStop(), ModelCheckpoint("best.safetensors", monitor="loss",
                                                             save_best_only=True)])
    return {"epochs": comm.allgather(len(history["loss"]))}


class FailingSGD(SGD):
    """SGD that raises on rank 1 after its third update, while rank 0 goes on to the fourth
    step and waits for rank 1's gradients."""

    def step(self, parameters):
        super().step(parameters)
        if distributed.world().rank == 1 and self.steps == 3:
            raise RuntimeError("rank 1 fails on purpose at step 3")


def fail() -> None:
    x, y = data("float32")
    dp = distributed.DataParallel(network("float32", False))
    dp.fit(x, y, epochs=EPOCHS, batch_size=16, optimizer=FailingSGD(0.05), verbose=0)
    print("training ended without the failure", flush=True)


def _checksums(model) -> list[float]:
    return [float(np.sum(to_numpy(p.value).astype(np.float64) ** 2)) for p in model.parameters()]


def _refusal(comm, call) -> dict:
    """What ``call()`` raised on each rank: ``{"raised": [...], "messages": [...]}``."""
    try:
        call()
        mine = (None, None)
    except distributed.DistributedError as exc:
        mine = (type(exc).__name__, str(exc))
    everyone = comm.allgather(mine)
    return {"raised": [kind for kind, _ in everyone], "messages": [m for _, m in everyone]}


def checks(outdir: Path) -> None:
    comm = distributed.world()
    rank = comm.rank
    x, y = data("float64")
    results = {}

    # ranks seeded differently: after DataParallel(...) every rank holds rank 0's parameters
    before = _checksums(network("float64", True, seed=7 + 1000 * rank))
    dp = distributed.DataParallel(network("float64", True, seed=7 + 1000 * rank))
    after = comm.allgather(_checksums(dp.model))
    mask = to_numpy(dp.model.layers[-2].rng.bernoulli((64,), 0.5, "float64"))
    results["broadcast"] = {
        "differed_before": comm.allgather(before)[0] != comm.allgather(before)[1],
        "identical_after": all(a == after[0] for a in after),
        "rank0_kept": after[0] == comm.bcast(before, root=0),
        "masks_identical": all(np.array_equal(m, mask) for m in comm.allgather(mask))}

    dp = distributed.DataParallel(network("float64", False))
    other = x.copy()
    other[7] += 1.0                     # one row differs: the sampled rows include every row

    def fit(per_rank):
        def call():
            settings = dict(epochs=1, batch_size=50, optimizer=SGD(0.05), verbose=0)
            settings.update(per_rank.get(rank, {}))
            dp.fit(settings.pop("x", x), settings.pop("y", y), **settings)
        return call

    cases = {
        "epochs": fit({1: {"epochs": 2}}),
        "batch_size": fit({1: {"batch_size": 64}}),
        "shuffle": fit({1: {"shuffle": False}}),
        "shuffle default": fit({1: {"shuffle": True, "verbose": 2}}),    # the same: accepted
        "seed": fit({1: {"seed": 1}}),
        "seed None": fit({0: {"seed": None}}),
        "validation_split": fit({0: {"validation_split": 0.1}, 1: {"validation_split": 0.2}}),
        "validation_data rows": fit({0: {"validation_data": (x, y)},
                                       1: {"validation_data": (other, y)}}),
        "validation_data length": fit({0: {"validation_data": (x[:100], y[:100])},
                                         1: {"validation_data": (x[:90], y[:90])}}),
        "optimizer lr": fit({1: {"optimizer": SGD(0.1)}}),
        "optimizer": fit({1: {"optimizer": Adam(0.05)}}),
        "x rows": fit({1: {"x": other}}),
        "x length": fit({1: {"x": x[:200], "y": y[:200]}}),
        "y": fit({1: {"y": (y + 1) % 10}}),
        "evaluate": lambda: dp.evaluate(x if rank == 0 else other, y),
        "predict": lambda: dp.predict(x if rank == 0 else x[:200]),
        "call": lambda: dp.evaluate(x, y) if rank == 0 else dp.predict(x),
        "activation": lambda: distributed.DataParallel(
            network("float64", False, activation=Tanh if rank == 0 else ReLU)),
        "dropout rate": lambda: distributed.DataParallel(
            network("float64", True, rate=0.5 if rank == 0 else 0.25)),
        "dtype": lambda: distributed.DataParallel(
            network("float64" if rank == 0 else "float32", False)),
        "reduction": lambda: distributed.DataParallel(
            network("float64", False), reduction="ordered" if rank == 0 else "mpi"),
    }
    results["refused"] = {name: _refusal(comm, call) for name, call in cases.items()}
    history = dp.fit(x, y, epochs=1, batch_size=50, optimizer=SGD(0.05), verbose=0)
    results["fit_after_refusals"] = len(history["loss"])

    # a wait that outlasts its bound: rank 1 comes 2.5 s late to a sum rank 0 waits 1 s for
    quick = distributed.DataParallel(network("float64", False), timeout=1)
    if rank == 1:
        time.sleep(2.5)
    results["timeout"] = _refusal(comm, lambda: quick.sum([1.0]))

    # optimizers whose state differs between the ranks: fit starts from rank 0's state
    model = network("float64", False)
    optimizer = SGD(0.05, momentum=0.9)
    start = rank * 100
    model.fit(x[start:start + 100], y[start:start + 100], epochs=1, batch_size=50,
              optimizer=optimizer, verbose=0)
    dp = distributed.DataParallel(model)
    dp.fit(x, y, epochs=1, batch_size=50, optimizer=optimizer, verbose=0)
    ends = comm.allgather(_checksums(dp.model))
    results["optimizer_state"] = {"identical": all(e == ends[0] for e in ends)}
    if rank == 0:
        (outdir / "checks.json").write_text(json.dumps(results, indent=1))


class BatchCentring(Layer):
    """x - mean(x over the batch): couples the samples with no data-parallel form."""

    samples_independent = False

    def _forward(self, x):
        self._cache = True
        return x - self.xp.mean(x, axis=0, keepdims=True)


def same_error() -> None:
    model = Sequential([Flatten(), BatchCentring(), Dense(2)], input_shape=(1, 2, 2))
    distributed.DataParallel(model)                     # refused on every rank


if __name__ == "__main__":
    if sys.argv[1] == "equivalence":
        equivalence(Path(sys.argv[2]))
    elif sys.argv[1] == "checks":
        checks(Path(sys.argv[2]))
    elif sys.argv[1] == "same_error":
        same_error()
    else:
        fail()
