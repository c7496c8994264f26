"""Host threads: Backend.parallel_map, and Sequential sharing a batch's chunks among workers.

The oracle for every threaded result is the same computation run in one thread. On NumPy,
Sequential uses helper processes rather than threads where it can (tests/test_helpers.py);
the tests here switch those off with PORTACNN_HELPER_PROCESSES=0.
"""

import os
import platform
import threading

import numpy as np
import pytest

import portacnn
from portacnn import runtime
from portacnn.models import lenet5
from portacnn.optim import SGD

from conftest import assert_close


def test_parallel_map_keeps_order_and_uses_the_threads():
    be = portacnn.get_backend("cpu")
    be.workers = 3
    barrier = threading.Barrier(3, timeout=10)   # passes only if 3 calls run at the same time

    def work(i):
        barrier.wait()
        return i * i, threading.current_thread().name

    out = be.parallel_map(work, range(3))
    assert [v for v, _ in out] == [0, 1, 4]
    assert len({name for _, name in out}) == 3


def test_parallel_map_with_one_worker_runs_in_the_caller():
    be = portacnn.get_backend("cpu")
    me = threading.current_thread().name
    assert be.parallel_map(lambda i: (i, threading.current_thread().name), [5, 6]) == \
        [(5, me), (6, me)]


def test_parallel_map_holds_blas_at_one_thread_per_worker():
    from threadpoolctl import threadpool_info

    be = portacnn.get_backend("cpu")
    be.workers = 2
    with be.limit_threads(2):
        seen = be.parallel_map(
            lambda _: {p["internal_api"]: p["num_threads"] for p in threadpool_info()
                       if p["user_api"] == "blas"}, range(2))
        after = {p["internal_api"]: p["num_threads"] for p in threadpool_info()
                 if p["user_api"] == "blas"}
    assert all(n == 1 for pools in seen for n in pools.values())
    assert all(n == 2 for n in after.values())          # restored once the threads are done


def test_parallel_map_reraises_after_every_piece_finished():
    be = portacnn.get_backend("cpu")
    be.workers = 2
    finished = []

    def work(i):
        if i == 1:
            raise ValueError("piece 1 failed")
        finished.append(i)
        return i

    with pytest.raises(ValueError, match="piece 1 failed"):
        be.parallel_map(work, range(4))
    assert sorted(finished) == [0, 2, 3]


def test_nested_parallel_map_runs_in_place():
    be = portacnn.get_backend("cpu")
    be.workers = 2
    out = be.parallel_map(lambda i: be.parallel_map(lambda j: 10 * i + j, range(3)), range(2))
    assert out == [[0, 1, 2], [10, 11, 12]]


def test_limit_threads_sets_workers_on_numpy_only(core_backend):
    before = core_backend.workers
    with core_backend.limit_threads(2):
        inside = core_backend.workers
    assert core_backend.workers == before == 1
    assert inside == (2 if core_backend.name == "numpy" else 1)


def _train(backend, workers, batch, steps=2, dtype="float64", sequential=False, monkeypatch=None):
    # BLAS at one thread throughout: OpenBLAS's result can depend on its thread count
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        return _train_steps(backend, workers, batch, steps, dtype, sequential, monkeypatch)


def _train_steps(backend, workers, batch, steps, dtype, sequential, monkeypatch):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(batch, 1, 28, 28))
    y = rng.integers(0, 10, batch)
    model = lenet5(device=backend, dtype=dtype, seed=5)
    model.backend.workers = workers
    if sequential:          # same chunks, run one after the other in this thread
        monkeypatch.setattr(model.backend, "parallel_map",
                            lambda fn, items: [fn(item) for item in items])
    opt = SGD(0.05, momentum=0.9)
    xb, yb = model.backend.asarray(x, dtype=dtype), model.backend.asarray(y)
    losses = [float(model.train_step(xb, yb, opt)[0]) for _ in range(steps)]
    params = [model.backend.to_numpy(p[k]) for _, p, k, _ in model.parameters()]
    return losses, params


@pytest.mark.parametrize("batch", [64, 150])
def test_threads_do_not_change_the_step(core_backend, batch, monkeypatch):
    # the same chunks, summed in chunk order: threaded == one thread == the chunks in turn
    monkeypatch.setenv("PORTACNN_HELPER_PROCESSES", "0")
    threaded = _train(core_backend, 2, batch)
    in_turn = _train(core_backend, 2, batch, sequential=True, monkeypatch=monkeypatch)
    one = _train(core_backend, 1, batch)
    for a, b, c in zip(threaded[1], in_turn[1], one[1]):
        assert_close(a, b)
        assert_close(a, c)
    if core_backend.name == "numpy":
        assert threaded[0] == in_turn[0] == one[0]
        for a, b, c in zip(threaded[1], in_turn[1], one[1]):
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("processes", ["1", "0"])
def test_chunk_bounds_share_the_batch_among_workers(monkeypatch, processes):
    monkeypatch.setenv("PORTACNN_HELPER_PROCESSES", processes)
    model = lenet5()
    for workers in (1, 2):
        model.backend.workers = workers
        assert model._chunk_bounds(64) == (0, 32, 64)
        assert model._chunk_bounds(12) == (0, 12)
    model.backend.workers = 1
    assert model._chunk_bounds(150) == (0, 30, 60, 90, 120, 150)   # equal, at most 32
    model.backend.workers = 2
    processes = model.backend.helper_processes
    # 2 workers, equal shares: threads only if chunks stay at 32 or more, processes from 16
    assert model._chunk_bounds(150) == ((0, 25, 50, 75, 100, 125, 150) if processes else
                                        (0, 30, 60, 90, 120, 150))
    assert model._chunk_bounds(32) == ((0, 16, 32) if processes else (0, 32))
    assert model._chunk_bounds(24) == (0, 24)
    monkeypatch.setattr(portacnn.Backend, "max_train_chunk", property(lambda self: None))
    assert model._chunk_bounds(64) == (0, 32, 64)       # 2 workers, a half each
    assert model._chunk_bounds(48) == ((0, 24, 48) if processes else (0, 48))
    model.backend.workers = 1
    assert model._chunk_bounds(64) == (0, 64)


def test_inference_on_two_workers_equals_one(core_backend, monkeypatch):
    monkeypatch.setenv("PORTACNN_HELPER_PROCESSES", "0")
    rng = np.random.default_rng(8)
    x = rng.normal(size=(200, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, 200)
    model = lenet5(device=core_backend, seed=2)
    model.backend.workers = 1
    p1, e1 = model.predict(x, batch_size=64), model.evaluate(x, y, batch_size=64)
    model.backend.workers = 2
    p2, e2 = model.predict(x, batch_size=64), model.evaluate(x, y, batch_size=64)
    assert_close(p2, model.backend.to_numpy(p1), "float32")
    assert e1[1] == e2[1] and abs(e1[0] - e2[0]) <= 1e-5 * abs(e1[0])
    if core_backend.name == "numpy":     # the same chunks: the same numbers
        np.testing.assert_array_equal(p1, p2)


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="the allocator setting exists on glibc only")
def test_keep_freed_memory_applies_once_and_can_be_turned_off(monkeypatch):
    monkeypatch.setattr(runtime, "_FREED_MEMORY_KEPT", None)
    monkeypatch.setenv("PORTACNN_KEEP_FREED_MEMORY", "0")
    assert runtime.keep_freed_memory() is False
    monkeypatch.setattr(runtime, "_FREED_MEMORY_KEPT", None)
    monkeypatch.delenv("PORTACNN_KEEP_FREED_MEMORY")
    assert runtime.keep_freed_memory() is True
    assert runtime.keep_freed_memory() is True         # idempotent


def test_keep_freed_memory_cuts_page_faults_of_a_training_step():
    # The measured effect itself: a step in a fresh process with the setting off faults in
    # fresh pages for its MB-sized arrays most of the time; with it on, they are reused.
    # Over 40 steps: 3,850-12,500 faults off, 2-231 on (8 runs each); over 10 steps glibc's
    # own adaptive threshold sometimes brought "off" down to 0.
    import subprocess
    import sys

    code = (
        "import resource, numpy as np\n"
        "from portacnn.models import lenet5\nfrom portacnn.optim import SGD\n"
        "m = lenet5(); o = SGD(0.01)\n"
        "x = np.zeros((64, 1, 28, 28), np.float32); y = np.zeros(64, np.int64)\n"
        "for _ in range(10): m.train_step(x, y, o)\n"
        "a = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "for _ in range(40): m.train_step(x, y, o)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - a)\n"
    )
    faults = {}
    for flag in ("0", "1"):
        env = dict(os.environ, PORTACNN_KEEP_FREED_MEMORY=flag)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, check=True)
        faults[flag] = int(out.stdout.split()[-1])
    if not runtime.keep_freed_memory():
        pytest.skip("the allocator setting is not available here")
    assert faults["1"] * 2 < faults["0"], faults


def test_thread_info_reports_the_workers(monkeypatch):
    be = portacnn.get_backend("cpu")
    with be.limit_threads(2):
        info = be.thread_info()
    assert info["workers"] == 2 and be.thread_info()["workers"] == 1
    assert info["workers_are"] == ("processes" if be.helper_processes else "threads")
    monkeypatch.setenv("PORTACNN_HELPER_PROCESSES", "0")
    assert be.thread_info()["workers_are"] == "threads"
