"""The programs tests/test_distributed.py runs under ``mpiexec -n 2`` (not a test module).

    python tests/mpi_worker.py equivalence OUTDIR   # data parallel against one process
    python tests/mpi_worker.py fail                 # rank 1 raises in its third step

``equivalence`` trains each case twice on every process: data-parallel (DataParallel.fit) and
alone (the plain one-process fit on the same global batches), then rank 0 writes OUTDIR/
results.json with the largest differences. Each process saves the data-parallel model from its
own directory OUTDIR/rank<r>, so the test can see which process wrote.
"""

import json
import os
import sys
from pathlib import Path

import numpy as np

from portacnn import (AvgPool2D, Conv2D, Dense, Dropout, Flatten, ReLU, Sequential, Tanh,
                      distributed)
from portacnn.backends import to_numpy
from portacnn.optim import SGD

N, BATCH, EPOCHS = 201, 100, 3     # batches of 100, 100 and 1 rows: the last leaves rank 0 empty


def network(dtype, dropout):
    layers = [Conv2D(4, 3, padding=1), Tanh(), AvgPool2D(2), Flatten(), Dense(16), ReLU()]
    if dropout:
        layers.append(Dropout(0.5))
    return Sequential(layers + [Dense(10)], input_shape=(1, 8, 8), dtype=dtype, seed=7)


def data(dtype):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, 1, 8, 8)).astype(dtype)
    y = rng.integers(0, 10, N)
    return x, y


def largest_difference(a_model, b_model):
    """max |a - b| / max(max |b|, 1) over the parameters."""
    worst = 0.0
    for a, b in zip(a_model.parameters(), b_model.parameters()):
        a, b = to_numpy(a.value), to_numpy(b.value)
        worst = max(worst, float(np.max(np.abs(a - b))) / max(float(np.max(np.abs(b))), 1.0))
    return worst


def equivalence(outdir: Path) -> None:
    comm = distributed.world()
    results = {"size": comm.size}
    for name, dtype, dropout in (("float64", "float64", False), ("float32", "float32", False),
                                 ("dropout", "float64", True)):
        x, y = data(dtype)
        alone = network(dtype, dropout)
        history_alone = alone.fit(x, y, epochs=EPOCHS, batch_size=BATCH,
                                  optimizer=SGD(0.05, momentum=0.9), seed=3, verbose=0)
        dp = distributed.DataParallel(network(dtype, dropout))
        history = dp.fit(x, y, epochs=EPOCHS, batch_size=BATCH,
                         optimizer=SGD(0.05, momentum=0.9), seed=3, verbose=2)
        loss, acc = dp.evaluate(x, y)
        loss_alone, acc_alone = alone.evaluate(x, y)
        probs = to_numpy(dp.predict(x, batch_size=50))
        checksums = comm.allgather([float(np.sum(to_numpy(p.value).astype(np.float64) ** 2))
                                    for p in dp.model.parameters()])
        results[name] = {
            "parameters": largest_difference(dp.model, alone),
            "moved": largest_difference(dp.model, network(dtype, dropout)),
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
    if comm.rank == 0:
        (outdir / "results.json").write_text(json.dumps(results, indent=1))


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


if __name__ == "__main__":
    if sys.argv[1] == "equivalence":
        equivalence(Path(sys.argv[2]))
    else:
        fail()
