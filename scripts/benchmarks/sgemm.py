"""The machine's single-thread SGEMM rate, measured in the benchmark's own run: the yardstick
the networks' GFLOP/s are read against.

NumPy's ``float32`` matrix product (the BLAS NumPy links, OpenBLAS in the wheels) at one thread
(threadpoolctl), best of a few repeats: on square products (:func:`square_peak`, the peak) and
on the products a network's step amounts to (:func:`shapes_gflops`, what im2col with the batch
folded into the columns could reach on those shapes).
"""

from __future__ import annotations

import time

import numpy as np
from threadpoolctl import threadpool_limits

SIZES, QUICK_SIZES = (1024, 2048), (256, 512)


def _best_seconds(a, b, repeats, out=None):
    """Fastest of ``repeats`` timings of ``a @ b`` (after one warm-up product)."""
    out = np.matmul(a, b, out=out)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.matmul(a, b, out=out)
        best = min(best, time.perf_counter() - t0)
    return best


def _operands(rng, a_shape, b_shape):
    return (rng.standard_normal(a_shape, dtype=np.float32),
            rng.standard_normal(b_shape, dtype=np.float32))


def square_peak(sizes=SIZES, repeats=3) -> dict:
    """``{"threads": 1, "by_size": {size: GFLOP/s}, "peak_gflops": the best}`` of float32
    square products ``(s, s) @ (s, s)`` at one BLAS thread, best of ``repeats``."""
    rng = np.random.default_rng(0)
    by_size = {}
    with threadpool_limits(limits=1, user_api="blas"):
        for s in sizes:
            a, b = _operands(rng, (s, s), (s, s))
            by_size[str(s)] = 2 * s ** 3 / _best_seconds(a, b, repeats) / 1e9
    return {"threads": 1, "by_size": by_size, "peak_gflops": max(by_size.values())}


def shapes_gflops(shapes, repeats=3) -> float:
    """GFLOP/s of the products ``shapes`` (``[(count, (a_shape, b_shape)), ...]``, as
    :func:`.flops.gemm_shapes` lists them) at one BLAS thread: their FLOPs over the sum of each
    product's best time, each distinct shape timed once."""
    rng = np.random.default_rng(0)
    seconds, flops, timed = 0.0, 0, {}
    with threadpool_limits(limits=1, user_api="blas"):
        for count, (a_shape, b_shape) in shapes:
            key = (tuple(a_shape), tuple(b_shape))
            if key not in timed:
                a, b = _operands(rng, a_shape, b_shape)
                timed[key] = _best_seconds(a, b, repeats)
            seconds += count * timed[key]
            flops += count * 2 * a_shape[0] * a_shape[1] * b_shape[1]
    return flops / seconds / 1e9
