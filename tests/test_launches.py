"""How many array operations the GPU's path issues: each is a kernel launch on CuPy.

LeNet-5 runs on a backend over the recording namespace (tests/recording.py): the generic
:class:`~portacnn.backends.Backend` with CuPy's kernel set, :class:`~portacnn.kernels.GpuKernels`
(the portable kernels but for pooling forwards over tiling windows; no chunking, one fused
optimizer update): exactly the path CuPy takes. The counts are the launch overhead a GPU pays
per step, held exactly; the portable set's own inference count is held too.
"""

import numpy as np
import pytest

from portacnn.backends import Backend
from portacnn.backends.cupy import CupyBackend
from portacnn.kernels import GpuKernels, Kernels, pooling
from portacnn.models import lenet5
from portacnn.optim import SGD, Adam

from recording import namespace as recording_xp
from recording import recording, wrap

# The exact counts LeNet-5 issues today at batch 64: a training step with SGD and momentum,
# with Adam, and an inference forward, for each of the two variants. A change that adds (or
# removes) operations on the portable path fails here and must say why in this file. The
# optimizer's share is the same for both variants: SGD with momentum one ``concat`` of the
# gradients and 4 arithmetic operations over all parameters at once; Adam 9 more for its
# moments, bias corrections and denominator.
# Pooling's 2x2/2 windows tile the input: its backward no longer adds the window gradients back
# with col2im's scatter (2 zeros and 4 ``at().add``s: 11 operations for average pooling, 13 for
# max) but builds them in block layout and reshapes them (1 and 3 operations): 20 fewer per step
# (were 115 and 124, 125 and 134). POOL_COUNTS below holds one pooling layer's share.
# ReLU is one ``clip`` with a Python bound and its backward one ``where`` with a Python zero, no
# zero array made for either: 8 fewer per ReLU/max step, 4 per forward (were 105, 114 and 26).
# The convolution's input gradient is a convolution (conv2's; conv1 computes none), no longer
# col2im's scatter (a matrix product, 2 zeros and 5 + 5 ``at().add``s: 23 operations) but a zero
# frame and one write of dy, one ``stack`` of its windows, one copy of the flipped, transposed
# weight and one matrix product (5): 18 fewer per step (were 95 and 104, 97 and 106).
# CONV_BACKWARD_COUNTS below holds one convolution backward's share.
# CuPy's set pools tiling windows with one reduction over a view of the input instead of a
# stack and a reduction: 1 fewer per pooling layer in inference, and in training for average
# pooling (were 77 and 86 for tanh/avg, and 22 per forward, which the portable set still
# issues: PORTABLE_INFERENCE).
COUNTS = {  # variant: (SGD step, Adam step, inference forward)
    ("tanh", "avg"): (75, 84, 20),
    ("relu", "max"): (79, 88, 20),
}
OPTIMIZERS = {"sgd": lambda: SGD(0.01, momentum=0.9), "adam": lambda: Adam(0.001)}


def _lenet(activation="tanh", pool="avg", kernels=GpuKernels()):
    be = Backend(recording_xp, device="cpu")
    be.kernels = kernels                          # CuPy's set unless a test asks otherwise
    model = lenet5(activation, pool, device=be, seed=0)
    rng = np.random.default_rng(0)
    x = be.asarray(rng.normal(size=(64, 1, 28, 28)), dtype="float32")
    y = be.asarray(rng.integers(0, 10, 64))
    return model, x, y


@pytest.fixture
def lenet():
    return _lenet()


def test_the_recording_backend_takes_cupys_path(lenet):
    model, _, _ = lenet
    assert type(model.backend.kernels) is type(CupyBackend.kernels) is GpuKernels
    assert model.backend.kernels.train_chunk is None
    assert model.backend.kernels.fuse_updates                # the GPU's one update of all


@pytest.mark.parametrize("variant", list(COUNTS), ids="/".join)
@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_a_training_step_issues_exactly_todays_operations_and_reads_nothing_back(variant,
                                                                                 optimizer):
    """After the first step (which makes the optimizer's slots and its flat arrays) every step
    issues the same operations: one ``concat``, of the gradients. The flat values and slots of
    the last step are reused, not gathered again."""
    model, x, y = _lenet(*variant)
    opt = OPTIMIZERS[optimizer]()
    with recording() as first:
        model.train_step(x, y, opt)
    assert first.by_name["concat"] == 2, first.by_name.most_common()   # the values, the grads
    for _ in range(2):
        with recording() as rec:
            model.train_step(x, y, opt)
        assert rec.host_reads == 0, rec.reads_by_name
        assert rec.by_name["concat"] == 1, rec.by_name.most_common()  # the gradients only
        expected = COUNTS[variant][0 if optimizer == "sgd" else 1]
        assert rec.ops == expected, rec.by_name.most_common()


PORTABLE_INFERENCE = {("tanh", "avg"): 22, ("relu", "max"): 22}


@pytest.mark.parametrize("kernels", ["gpu", "portable"])
@pytest.mark.parametrize("variant", list(COUNTS), ids="/".join)
def test_an_inference_forward_issues_exactly_todays_operations(variant, kernels):
    model, x, _ = _lenet(*variant, kernels=GpuKernels() if kernels == "gpu" else Kernels())
    model.eval()
    with recording() as rec:
        model.forward(x)
    assert rec.host_reads == 0, rec.reads_by_name
    expected = COUNTS[variant][2] if kernels == "gpu" else PORTABLE_INFERENCE[variant]
    assert rec.ops == expected, rec.by_name.most_common()


# One pooling layer on the portable path, exactly: (training forward, inference forward,
# backward). "tiles" is LeNet's 2x2/2 on its first pooling input's size, which it tiles: the
# backward is a ``where`` of a one-hot of the argmax (an ``arange`` and a comparison) or one
# division, in the block layout that reshapes onto the input. "overlapping" is a 3x3 window at
# stride 1, whose backward gathers: the window gradients on a zero buffer (2 operations), one
# ``stack`` of the kh*kw shifted slices and one sum. Neither adds anything up in place.
POOL_GEOMETRIES = {"tiles": ((4, 6, 28, 28), 2, None, 0),
                   "overlapping": ((2, 3, 10, 10), 3, 1, 0)}
POOL_COUNTS = {
    ("max", "tiles"): (3, 2, 3),          # forward: a stack of the windows, max (and argmax)
    ("min", "tiles"): (3, 2, 3),          # min and argmin: no negation of x and y
    ("avg", "tiles"): (2, 2, 1),
    ("max", "overlapping"): (3, 2, 7),
    ("min", "overlapping"): (3, 2, 7),
    ("avg", "overlapping"): (2, 2, 4),    # the mean of the stack divides by kh*kw
}


@pytest.mark.parametrize("kind,route", list(POOL_COUNTS),
                         ids=[f"{kind}-{route}" for kind, route in POOL_COUNTS])
def test_a_pooling_layer_issues_exactly_its_operations(kind, route):
    shape, kernel, stride, padding = POOL_GEOMETRIES[route]
    forward = getattr(pooling, f"{kind}_pool2d_forward")
    backward = getattr(pooling, f"{kind}_pool2d_backward")
    x = wrap(np.random.default_rng(0).normal(size=shape).astype(np.float32))
    with recording() as train:
        y, cache = forward(x, kernel, stride, padding)
    with recording() as infer:
        forward(x, kernel, stride, padding, inference=True)
    dy = wrap(np.ones(y.shape, dtype=np.float32))
    with recording() as back:
        backward(dy, cache)
    assert not {"__iadd__", "add"} & set(back.by_name), back.by_name    # no scatter
    assert (train.ops, infer.ops, back.ops) == POOL_COUNTS[kind, route], \
        (train.by_name, infer.by_name, back.by_name)


# One convolution backward on the portable path, exactly, with and without the input gradient:
# dW is a matrix product and a sum over the batch, db one sum. dx adds 5 operations whatever the
# kernel's size, stride or padding: a zero frame and one (strided) write of dy into it, one
# ``stack`` of the frame's kh*kw windows, one copy of the flipped, transposed weight, one matrix
# product; replicate padding adds the fold of the border onto the edges (4 ``at().add``s: 8,
# and the 4 sums of the border rows and columns). A 1x1 kernel at stride 1 needs no frame (dy,
# its padding rows cut off, is one) and its transposed weight is a view: a stack of one slice
# and the product, 2.
CONV_GEOMETRIES = {"lenet conv2": ((4, 6, 14, 14), (16, 6, 5, 5), 1, 0, "zeros"),
                   "strided wide padding": ((2, 3, 9, 8), (4, 3, 3, 2), 2, 3, "zeros"),
                   "replicate": ((2, 3, 9, 8), (4, 3, 3, 3), 1, 1, "replicate"),
                   "1x1": ((2, 3, 5, 4), (2, 3, 1, 1), 1, 2, "zeros")}
CONV_BACKWARD_COUNTS = {"lenet conv2": (3, 8), "strided wide padding": (3, 8),
                        "replicate": (3, 20), "1x1": (3, 5)}


@pytest.mark.parametrize("route", list(CONV_GEOMETRIES))
def test_a_convolution_backward_issues_exactly_its_operations(route):
    x_shape, w_shape, stride, padding, mode = CONV_GEOMETRIES[route]
    rng = np.random.default_rng(0)
    x, w = (wrap(rng.normal(size=s).astype(np.float32)) for s in (x_shape, w_shape))
    y, cache = Kernels.conv2d_forward(x, w, None, stride, padding, mode)
    dy = wrap(np.ones(y.shape, dtype=np.float32))
    counts = []
    for need_dx in (False, True):
        with recording() as rec:
            Kernels.conv2d_backward(dy, w, cache, need_dx=need_dx)
        counts.append(rec.ops)
    assert tuple(counts) == CONV_BACKWARD_COUNTS[route], rec.by_name


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
