"""portacnn.threads.default_threads: the BLAS threads fit and the command line use when none
are asked for (the cores the load average leaves idle, at least one)."""

import pytest

from portacnn.threads import available_cores, default_threads


@pytest.mark.parametrize("cores, load, expected", [
    (2, 0.0, 2),            # an idle machine: every core
    (2, 0.25, 2),           # background noise leaves a core idle
    (2, 0.3, 1),            # a core over a quarter busy counts as busy
    (2, 7.5, 1),            # overloaded: one thread, never zero
    (8, 2.9, 5),
    (4, -1.0, 4),           # never more than the cores
])
def test_default_threads_are_the_idle_cores(cores, load, expected):
    assert default_threads(cores=cores, load=load) == expected


def test_default_threads_read_this_machine():
    assert 1 <= default_threads() <= available_cores()


def test_the_command_line_leaves_threads_to_the_policy_unless_asked():
    from portacnn.cli import train_parser

    assert train_parser().parse_args([]).threads is None
    assert train_parser().parse_args(["--threads", "2"]).threads == 2


def test_fit_takes_what_it_is_asked_or_leaves_a_cap_alone(monkeypatch):
    import portacnn.threads as threads

    monkeypatch.setattr(threads, "available_cores", lambda: 4)
    monkeypatch.setattr(threads, "default_threads", lambda: 3)
    assert threads.threads_for_fit(2, blas_threads=4) == 2          # asked for
    assert threads.threads_for_fit(blas_threads=1) is None          # capped by the caller
    assert threads.threads_for_fit(blas_threads=4) == 3             # uncapped: the policy


def test_fit_reads_the_pools_a_caller_capped():
    from threadpoolctl import threadpool_limits

    from portacnn.threads import threads_for_fit

    if available_cores() < 2:
        pytest.skip("one core: a cap of 1 is no cap")
    with threadpool_limits(limits=1):
        assert threads_for_fit() is None


def test_fit_trains_inside_the_thread_count_the_policy_gives(monkeypatch):
    """fit runs its epochs under ``backend.limit_threads``: the count asked for, else the
    policy's, and one a process when a batch is shared by several."""
    import contextlib

    import numpy as np

    import portacnn.training.loop as loop
    from portacnn import Dense, Flatten, Sequential
    from portacnn.training import OneProcess

    model = Sequential([Flatten(), Dense(3)], input_shape=(1, 2, 2), device="cpu")
    seen = []

    @contextlib.contextmanager
    def limit_threads(threads):
        seen.append(threads)
        yield

    monkeypatch.setattr(model.backend, "limit_threads", limit_threads)
    monkeypatch.setattr(loop, "threads_for_fit", lambda t: 5 if t is None else t)

    class TwoProcesses(OneProcess):
        size = 2

    x, y = np.zeros((4, 1, 2, 2), dtype=np.float32), np.array([0, 1, 2, 0])
    model.fit(x, y, verbose=0)
    model.fit(x, y, verbose=0, threads=3)
    loop.fit(model, x, y, verbose=0, replicas=TwoProcesses())
    assert seen == [5, 3, 1]
