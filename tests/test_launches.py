"""How many array operations the portable path issues: each is a kernel launch on CuPy.

LeNet-5 runs on a backend over the recording namespace (tests/recording.py), which is the
generic :class:`~portacnn.backends.Backend` with the portable kernel set (no overrides, no
chunking): exactly the path CuPy takes. The counts bound the launch overhead a GPU pays per step.
"""

import numpy as np
import pytest

from portacnn.backends import Backend
from portacnn.kernels import Kernels
from portacnn.models import lenet5
from portacnn.optim import SGD

from recording import namespace as recording_xp
from recording import recording

# The counts LeNet-5 (tanh, average pooling; SGD with momentum, batch 64) issues today: a change
# that adds operations to the portable path fails here and must say why in this file.
TRAIN_STEP_MAX = 115
INFERENCE_MAX = 22


@pytest.fixture
def lenet():
    be = Backend(recording_xp, device="cpu")
    model = lenet5(device=be, seed=0)
    rng = np.random.default_rng(0)
    x = be.asarray(rng.normal(size=(64, 1, 28, 28)), dtype="float32")
    y = be.asarray(rng.integers(0, 10, 64))
    return model, x, y


def test_the_recording_backend_takes_the_portable_path(lenet):
    model, _, _ = lenet
    assert type(model.backend.kernels) is Kernels and model.backend.kernels.train_chunk is None


def test_a_training_step_issues_few_operations_and_reads_nothing_back(lenet):
    model, x, y = lenet
    opt = SGD(0.01, momentum=0.9)
    model.train_step(x, y, opt)                       # the momentum buffers are made here
    with recording() as rec:
        model.train_step(x, y, opt)
    assert rec.host_reads == 0, rec.reads_by_name
    assert 60 < rec.ops <= TRAIN_STEP_MAX, rec.by_name.most_common()


def test_an_inference_forward_issues_few_operations(lenet):
    model, x, _ = lenet
    model.eval()
    with recording() as rec:
        model.forward(x)
    assert rec.host_reads == 0, rec.reads_by_name
    assert 10 < rec.ops <= INFERENCE_MAX, rec.by_name.most_common()


def test_fit_reads_back_per_epoch_not_per_batch(lenet):
    model, _, _ = lenet
    rng = np.random.default_rng(1)
    x = rng.normal(size=(96, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, 96)
    reads = []
    for batch_size in (32, 16):                       # 3 and 6 batches per epoch
        with recording() as rec:
            model.fit(x, y, epochs=1, batch_size=batch_size, verbose=0)
        reads.append(rec.host_reads)
    assert reads[0] == reads[1] == 2                  # the epoch's loss and accuracy


def test_data_that_fits_moves_to_the_device_once_per_fit(lenet):
    """With a ``device_data_limit`` (a GPU's), fit uploads the data and each epoch's order
    once, gathers the epoch on the device and slices batches: the uploads do not grow with
    the number of batches. Without one (the CPU), each batch is one upload of x and one of y."""
    model, _, _ = lenet
    rng = np.random.default_rng(1)
    x = rng.normal(size=(96, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, 96)
    uploads = {}
    for limit in (None, 2**30):
        model.backend.device_data_limit = limit
        for batch_size in (32, 16):                   # 3 and 6 batches per epoch
            with recording() as rec:
                model.fit(x, y, epochs=2, batch_size=batch_size, verbose=0)
            uploads[limit, batch_size] = rec.by_name["asarray"]
    assert uploads[None, 32] == 2 * 2 * 3 and uploads[None, 16] == 2 * 2 * 6
    assert uploads[2**30, 32] == uploads[2**30, 16] == 2 + 2       # x, y; an order per epoch
    model.backend.device_data_limit = 2**30
    with recording() as rec:
        model.evaluate(x, y, batch_size=32)
        model.predict(x, batch_size=32)
    assert rec.by_name["asarray"] == 3                               # x, y; x again for predict
