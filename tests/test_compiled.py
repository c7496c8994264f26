"""Compiled training on JAX (``fit(..., compile=True)``, portacnn/training/compiled.py) against
eager training, the reference: the same losses, parameters, running statistics and dropout
masks, step for step. The eager runs are NumPy's (the same seed draws the same weights and
masks on every backend): eager JAX compiles each operation at its first call, seconds for a
small model. Models and data are small: tracing and compiling dominate the time.
"""

import numpy as np
import pytest

from portacnn import BatchNorm2D, Conv2D, Dense, Dropout, Flatten, MaxPool2D, ReLU, Sequential
from portacnn.optim import SGD, Adam
from portacnn.training import train_step
from portacnn.training.compiled import CompiledTraining

from helpers import assert_close, make_backend, small_net, toy_data

pytest.importorskip("jax", reason="jax is not installed (optional backend)")


@pytest.fixture(scope="module", autouse=True)
def jax_backend():
    return make_backend("jax")          # x64 on, for the float64 case


def net(dtype, device, seed=0):
    """Conv - BatchNorm - ReLU - MaxPool - Flatten - Dropout - Dense on 1x6x6 images (no
    convolution bias: batch norm cancels its gradient, and Adam would amplify the rounding
    noise left in its place)."""
    return Sequential([Conv2D(4, 3, padding=1, bias=False), BatchNorm2D(), ReLU(), MaxPool2D(2), Flatten(),
                       Dropout(0.3), Dense(3)], input_shape=(1, 6, 6), device=device,
                      dtype=dtype, seed=seed)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_compiled_fit_evaluate_predict_follow_eager(dtype):
    x, y = toy_data(32)
    runs = []
    for compile in (False, True):
        model = net(dtype, "jax" if compile else "numpy")
        history = model.fit(x, y, epochs=2, batch_size=16, optimizer=Adam(0.01), verbose=0,
                            compile=compile)
        runs.append((model, history.history["loss"]))
    (eager, eager_loss), (compiled, compiled_loss) = runs
    assert_close(np.array(compiled_loss), np.array(eager_loss), dtype)
    assert compiled_loss[-1] < compiled_loss[0]
    for a, b in zip(compiled.parameters() + compiled.buffers(),
                    eager.parameters() + eager.buffers()):
        assert_close(a.value, eager.backend.to_numpy(b.value), dtype)
    assert compiled.optimizer.steps == eager.optimizer.steps == 4
    mean = compiled.buffers()[0].value        # batch norm's running mean moved from zeros
    assert float(np.max(np.abs(compiled.backend.to_numpy(mean)))) > 1e-3
    # inference (eval mode: the running statistics) compiled, against the eager model's
    assert_close(compiled.predict(x, batch_size=16, compile=True),
                 eager.predict(x, batch_size=16), dtype)
    (loss, acc), (eager_loss, eager_acc) = (compiled.evaluate(x, y, 16, compile=True),
                                            eager.evaluate(x, y, 16))
    assert_close(np.array(loss), np.array(eager_loss), dtype)
    assert acc == eager_acc


def test_dropout_masks_change_between_compiled_steps():
    # With a rate too small to move the weights, two steps on one batch differ only by their
    # masks: a mask compiled in as a constant would give the same logits twice.
    x, y = toy_data(8)
    eager, compiled = small_net("numpy", dropout=True), small_net("jax", dropout=True)
    xb, yb = compiled.backend.asarray(x), compiled.backend.asarray(y)
    step = CompiledTraining(compiled, SGD(1e-9), train_step)
    eager_opt = SGD(1e-9)
    first, second = step(xb, yb)[1], step(xb, yb)[1]
    assert not np.allclose(np.asarray(first), np.asarray(second))
    for logits in (first, second):          # the masks eager training draws, step for step
        assert_close(logits, eager.train_step(x, y, eager_opt)[1], "float32")


def test_compile_off_jax_names_the_fix():
    x, y = toy_data(8)
    with pytest.raises(ValueError, match="device='jax'"):
        small_net("numpy").fit(x, y, epochs=1, verbose=0, compile=True)
    with pytest.raises(ValueError, match="must be on JAX"):
        small_net("numpy").predict(x, compile=True)
