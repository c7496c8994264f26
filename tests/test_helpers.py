"""Helper processes (portacnn.helpers): Sequential sharing each batch with other processes.

The oracle is the same model run by one worker: the chunks are the same and summed in the same
order, so on NumPy every number must be bit for bit the same.
"""

import gc
import os
import signal

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import portacnn
from portacnn import helpers
from portacnn.layers import Conv2D, Dense, Flatten, Tanh
from portacnn.model import Sequential
from portacnn.models import lenet5
from portacnn.optim import SGD

pytestmark = pytest.mark.skipif(not helpers.available(),
                                reason="helper processes need Linux (memfd_create)")


def _data(n, seed=3, dtype="float64"):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 1, 28, 28)).astype(dtype), rng.integers(0, 10, n)


def _params(model):
    return [np.array(p[k]) for _, p, k, _ in model.parameters()]


def _fit(model, workers, x, y, batch, epochs=2):
    # BLAS at one thread throughout: OpenBLAS's result can depend on its thread count
    model.backend.workers = workers
    try:
        with threadpool_limits(1):
            hist = model.fit(x, y, epochs=epochs, batch_size=batch, optimizer=SGD(0.05, 0.9),
                             shuffle=False, verbose=0)
    finally:
        model.backend.workers = 1
    return hist["loss"], _params(model)


@pytest.mark.parametrize("workers,batch", [(2, 64), (2, 150), (3, 96)])
def test_training_with_helpers_equals_one_worker(workers, batch):
    x, y = _data(300)
    model = lenet5(dtype="float64", seed=5)
    model.backend.workers = workers
    bounds = {n: model._chunk_bounds(n) for n in (batch, len(x) % batch) if n}
    model.backend.workers = 1
    oracle = lenet5(dtype="float64", seed=5)
    oracle._chunk_bounds = bounds.__getitem__      # the same chunks, all run in this process
    one = _fit(oracle, 1, x, y, batch)
    shared = _fit(model, workers, x, y, batch)
    pool = model._helpers
    assert isinstance(pool, helpers.HelperPool) and pool.workers == workers
    pids = {h.process.pid for h in pool._helpers}
    assert len(pids) == workers - 1 and os.getpid() not in pids
    assert all(h.process.poll() is None for h in pool._helpers)       # still running
    assert shared[0] == one[0]
    for a, b in zip(shared[1], one[1]):
        np.testing.assert_array_equal(a, b)


def test_mse_targets_travel_to_the_helpers():
    # float (N, k) targets instead of int labels, and a model without pooling
    def model():
        return Sequential([Conv2D(4, 3, name="c"), Tanh(), Flatten(), Dense(3)],
                          input_shape=(1, 8, 8), dtype="float64", seed=1, loss="mse")

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(128, 1, 8, 8)), rng.normal(size=(128, 3))
    one = _fit(model(), 1, x, y, 64)
    m = model()
    shared = _fit(m, 2, x, y, 64)
    assert m._helpers is not None
    assert shared[0] == one[0]
    for a, b in zip(shared[1], one[1]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("batchnorm", [False, True])
def test_inference_with_helpers_equals_one_worker(batchnorm):
    x, y = _data(300, seed=8, dtype="float32")
    model = lenet5(activation="relu", pool="max", batchnorm=batchnorm, seed=2)
    with threadpool_limits(1):
        model.fit(x, y, epochs=1, batch_size=100, verbose=0)   # running statistics move
        p1, e1 = model.predict(x, batch_size=64), model.evaluate(x, y, batch_size=64)
        model.backend.workers = 2
        try:
            p2, e2 = model.predict(x, batch_size=64), model.evaluate(x, y, batch_size=64)
        finally:
            model.backend.workers = 1
    assert model._helpers is not None
    np.testing.assert_array_equal(p1, p2)
    assert e1 == e2


def test_large_inputs_go_to_the_helpers_in_rounds(monkeypatch):
    # A helper's shared block must not grow with the size of x: predict runs in rounds.
    import portacnn.model as model_module

    x, y = _data(1000, seed=4, dtype="float32")
    model = lenet5(seed=3)
    with threadpool_limits(1):
        p1, e1 = model.predict(x, batch_size=64), model.evaluate(x, y, batch_size=64)
    image = 28 * 28 * 4
    monkeypatch.setattr(model_module, "ROUND_BYTES", 2 * 64 * image)    # 2 chunks a round
    model.backend.workers = 2
    try:
        with threadpool_limits(1):
            p2, e2 = model.predict(x, batch_size=64), model.evaluate(x, y, batch_size=64)
    finally:
        model.backend.workers = 1
    np.testing.assert_array_equal(p1, p2)
    assert e1 == e2
    block = model._helpers._helpers[0].size
    assert 2 * 64 * image <= block < 4 * 64 * image          # not 500 images' worth


def test_a_killed_helper_raises_and_the_next_step_starts_a_new_one():
    x, y = _data(64, dtype="float32")
    model = lenet5()
    opt = SGD(0.01)
    model.backend.workers = 2
    try:
        model.train_step(x, y, opt)
        old = model._helpers._helpers[0].process
        os.kill(old.pid, signal.SIGKILL)
        old.wait(timeout=10)
        with pytest.raises(helpers.HelperError, match="exited with code.*PORTACNN_HELPER_PROC"):
            model.train_step(x, y, opt)
        assert model._helpers is None
        loss, _ = model.train_step(x, y, opt)
        assert np.isfinite(float(loss))
        assert model._helpers._helpers[0].process.pid != old.pid
    finally:
        model.backend.workers = 1


def test_an_error_in_the_helper_comes_back_with_its_traceback():
    x, _ = _data(64, dtype="float32")
    model = lenet5()
    pool = helpers.HelperPool(model, 1)
    try:
        pool.submit(model, "bogus", [[(0, 32)]], lambda a, b: x[a:b])
        with pytest.raises(helpers.HelperError, match="(?s)Traceback.*unknown request 'bogus'"):
            pool.collect()
        pool.submit(model, "forward", [[(0, 32)]], lambda a, b: x[a:b])   # still serving
        (out,) = pool.collect()
        np.testing.assert_array_equal(out, model.forward(x[:32]))
    finally:
        pool.close()


def test_a_helper_that_cannot_build_the_model_fails_at_start(monkeypatch):
    from portacnn import checkpoint

    real = checkpoint.architecture

    def broken(model):
        arch = real(model)
        arch["layers"][0]["type"] = "NoSuchLayer"
        return arch

    monkeypatch.setattr(checkpoint, "architecture", broken)
    with pytest.raises(helpers.HelperError, match="(?s)failed:.*NoSuchLayer"):
        helpers.HelperPool(lenet5(), 1)


def test_an_abandoned_step_does_not_disturb_the_next(monkeypatch):
    # The caller fails after handing the helper its chunk (think Ctrl-C): the helper's
    # late reply must be drained, not taken for the next step's.
    import portacnn.model as model_module

    x, y = _data(64)
    ref = lenet5(dtype="float64", seed=5)
    with threadpool_limits(1):
        ref.train_step(x, y, SGD(0.05))
    model = lenet5(dtype="float64", seed=5)
    real = model_module.chunk_gradients
    calls = []

    def fail_once(*args):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("interrupted")
        return real(*args)

    monkeypatch.setattr(model_module, "chunk_gradients", fail_once)
    model.backend.workers = 2
    try:
        with threadpool_limits(1):
            opt = SGD(0.05)
            with pytest.raises(RuntimeError, match="interrupted"):
                model.train_step(x, y, opt)
            model.train_step(x, y, opt)
    finally:
        model.backend.workers = 1
    for a, b in zip(_params(model), _params(ref)):
        np.testing.assert_array_equal(a, b)


def test_models_with_custom_layers_use_threads():
    class MyTanh(Tanh):
        pass

    model = Sequential([Conv2D(4, 3), MyTanh(), Flatten(), Dense(10)], input_shape=(1, 8, 8))
    model.backend.workers = 2
    try:
        assert model._helper_pool() is None
    finally:
        model.backend.workers = 1


def test_helpers_can_be_switched_off(monkeypatch):
    monkeypatch.setenv("PORTACNN_HELPER_PROCESSES", "0")
    model = lenet5()
    assert model.backend.helper_processes is False
    model.backend.workers = 2
    try:
        x, y = _data(64, dtype="float32")
        model.train_step(x, y, SGD(0.01))
    finally:
        model.backend.workers = 1
    assert model._helpers is None


def test_the_helpers_end_with_their_model():
    model = lenet5()
    model.backend.workers = 3
    try:
        pool = model._helper_pool()
    finally:
        model.backend.workers = 1
    processes = [h.process for h in pool._helpers]
    assert len(processes) == 2
    del model, pool
    gc.collect()
    for process in processes:
        assert process.wait(timeout=10) == 0


def test_a_forked_copy_of_the_model_does_not_use_its_parents_helpers():
    model = lenet5()
    model.backend.workers = 2
    try:
        first = model._helper_pool()
        first.owner = -1                      # as seen from a process forked after the start
        second = model._helper_pool()
    finally:
        model.backend.workers = 1
    assert second is not first and second.owner == os.getpid()
    assert all(h.process.poll() is None for h in first._helpers)     # left to its owner
    first.close()


def test_backend_reports_helper_processes_on_numpy_only(core_backend):
    assert core_backend.helper_processes is (core_backend.name == "numpy")
    assert portacnn.get_backend("cpu").helper_processes is True
