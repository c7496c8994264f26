"""Batch normalisation over several processes' rows (the kernels' ``gather``), simulated by
threads in one process: R shards normalise as the whole batch does in one."""

import threading

import numpy as np
import pytest

from portacnn import kernels as K
from portacnn.namespace import namespace

from helpers import SELECTED, assert_close, make_backend

# (batch shape, shard bounds): a 2-d and a 1-d norm, shards of unequal sizes, empty shards
CASES = [((7, 3, 4, 5), (0, 3, 7)), ((9, 4), (0, 4, 4, 9)), ((6, 2), (0, 0, 6))]
# eager JAX compiles every operation for every shard's shape (4-5 s a case): one case there
RUNS = [(name, case) for name in SELECTED if name != "strict-device1"
        for case in (CASES[-1:] if name == "jax" else CASES)]


def _as_processes(shards, work):
    """``work(r, shard, gather)`` for each shard at once, one thread each; ``gather`` hands
    every thread all the threads' arrays (k, C) stacked in rank order, (R, k, C), as MPI would.
    Returns the results in rank order."""
    size = len(shards)
    barrier = threading.Barrier(size, timeout=30)
    slots, results, errors = [None] * size, [None] * size, []

    def run(r):
        def gather(array):
            slots[r] = array
            barrier.wait()
            everyone = namespace(array).stack(slots)
            barrier.wait()                  # all have read before anyone writes again
            return everyone

        try:
            results[r] = work(r, shards[r], gather)
        except BaseException as exc:        # noqa: BLE001 - re-raised below
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(r,)) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


@pytest.mark.parametrize("name, case", RUNS, ids=str)
def test_shards_with_gathered_statistics_normalise_as_the_whole_batch(name, case):
    be = make_backend(name)
    shape, bounds = case
    rng = np.random.default_rng(0)
    c = shape[1]
    x = rng.normal(size=shape) * 3 + 1e4     # a large mean: a sum of squares would cancel
    dy = rng.normal(size=shape)
    gamma, beta = rng.normal(size=c), rng.normal(size=c)
    running = (be.asarray(rng.normal(size=c)), be.asarray(rng.uniform(1, 2, size=c)))
    params = (be.asarray(gamma), be.asarray(beta))
    whole = K.batchnorm_forward(be.asarray(x), *params, *running, training=True)
    dx, dgamma, dbeta = K.batchnorm_backward(be.asarray(dy), whole[1])

    def work(r, rows, gather):
        lo, hi = rows
        y, cache, mean, var = K.batchnorm_forward(be.asarray(x[lo:hi]), *params, *running,
                                                  training=True, gather=gather)
        return (y, mean, var, *K.batchnorm_backward(be.asarray(dy[lo:hi]), cache))

    parts = _as_processes(list(zip(bounds[:-1], bounds[1:])), work)
    assert_close(np.concatenate([be.to_numpy(p[0]) for p in parts]), be.to_numpy(whole[0]))
    assert_close(np.concatenate([be.to_numpy(p[3]) for p in parts]), be.to_numpy(dx))
    for p in parts:                              # every process: the whole batch's running stats
        assert_close(p[1], be.to_numpy(whole[2]))
        assert_close(p[2], be.to_numpy(whole[3]))
    assert_close(sum(be.to_numpy(p[4]) for p in parts), be.to_numpy(dgamma))
    assert_close(sum(be.to_numpy(p[5]) for p in parts), be.to_numpy(dbeta))


def test_gathered_statistics_still_need_two_values_a_channel():
    def work(r, rows, gather):
        return K.batchnorm_forward(np.ones((rows, 3)), np.ones(3), np.zeros(3), np.zeros(3),
                                   np.ones(3), training=True, gather=gather)

    with pytest.raises(ValueError, match="needs more than one value per channel"):
        _as_processes([0, 1], work)
    assert len(_as_processes([0, 2], work)) == 2       # 2 rows over all processes suffice
