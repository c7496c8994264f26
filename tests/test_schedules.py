"""Learning-rate schedules: their values at known epochs, and the rate reaching the update."""

import contextlib
import math
import types

import numpy as np
import pytest

from portacnn.callbacks import Callback, LearningRateScheduler
from portacnn.layers import Layer
from portacnn.optim import SGD
from portacnn.schedules import cosine_decay, step_decay, warmup

from helpers import small_net, toy_data


def test_schedule_values_at_known_epochs():
    step = step_decay(0.1, every=3, drop=0.5)
    assert [step(e) for e in range(7)] == pytest.approx([0.1] * 3 + [0.05] * 3 + [0.025])
    cosine = cosine_decay(0.1, epochs=4, floor=0.02)
    assert [cosine(e) for e in (0, 2, 4, 9)] == pytest.approx([0.1, 0.06, 0.02, 0.02])
    assert cosine(1) == pytest.approx(0.02 + 0.08 * (1 + math.cos(math.pi / 4)) / 2)
    warm = warmup(cosine, epochs=3)             # 0.1 * 1/4, 2/4, 3/4, then the cosine
    assert [warm(e) for e in range(6)] == pytest.approx([0.025, 0.05, 0.075, 0.1, cosine(1),
                                                         cosine(2)])
    assert [warmup(0.2, 1)(e) for e in range(3)] == pytest.approx([0.1, 0.2, 0.2])


def test_bad_schedule_arguments_are_refused():
    with pytest.raises(ValueError, match="every must be a positive whole number of epochs"):
        step_decay(0.1, every=0)
    with pytest.raises(ValueError, match=r"floor must be in \[0, initial\]"):
        cosine_decay(0.1, 10, floor=0.5)
    with pytest.raises(ValueError, match="learning rate must be a positive number, got 0"):
        SGD(0.1).learning_rate = 0


@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "per-parameter"])
def test_a_changed_rate_moves_the_weights_by_that_rate(core_backend, fuse):
    """Two parameters with momentum; the rate changed between steps is the next step's, and
    the momentum buffer survives the change (the state is not rebuilt)."""
    layers = []
    for shape in [(2, 3), (4,)]:
        layer = Layer(dtype="float64")
        layer.params["weight"] = core_backend.asarray(np.ones(shape))
        layer.backend = types.SimpleNamespace(kernels=types.SimpleNamespace(fuse_updates=fuse),
                                              activate=contextlib.nullcontext)
        layers.append(layer)
    params = [p for i, layer in enumerate(layers) for p in layer.parameters(f"{i}.")]
    opt = SGD(lr=0.125, momentum=0.5)
    expected, buffer = [np.ones((2, 3)), np.ones(4)], None
    for lr, g in [(0.125, 1.0), (0.25, 2.0), (0.03125, -1.0)]:   # exact in binary
        opt.learning_rate = lr
        for p in params:
            p.grad = core_backend.asarray(np.full(tuple(p.value.shape), g))
        opt.step(params)
        buffer = g if buffer is None else 0.5 * buffer + g
        expected = [e - lr * buffer for e in expected]
        for p, e in zip(params, expected):
            np.testing.assert_array_equal(core_backend.to_numpy(p.value), e)
    assert opt.lr == opt.learning_rate == 0.03125


def test_learning_rate_scheduler_sets_the_rate_of_each_epoch():
    """In a fit: the rate of each epoch is the schedule's (checked by a callback that reads it
    during the epoch's end); fit with the per-epoch schedule equals fits of one epoch each."""
    x, y = toy_data(12)
    seen = []

    class Record(Callback):                     # reads the rate the epoch trained with
        def on_epoch_end(self, epoch, logs=None):
            seen.append(self.model.optimizer.learning_rate)

    model = small_net(seed=1)
    schedule = step_decay(0.2, every=1, drop=0.5)
    model.fit(x, y, epochs=3, batch_size=4, optimizer=SGD(0.9), shuffle=False, verbose=0,
              callbacks=[LearningRateScheduler(schedule), Record()])
    assert seen == pytest.approx([0.2, 0.1, 0.05])
    by_hand, opt = small_net(seed=1), SGD(0.9)
    for rate in seen:
        opt.learning_rate = rate
        by_hand.fit(x, y, epochs=1, batch_size=4, optimizer=opt, shuffle=False, verbose=0)
    for a, b in zip(model.parameters(), by_hand.parameters()):
        np.testing.assert_array_equal(np.asarray(a.value), np.asarray(b.value))
