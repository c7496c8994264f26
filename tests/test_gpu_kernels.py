"""GpuKernels, CuPy's kernel set: its pooling forwards equal the naive loops on every geometry
(one reduction over a view where the windows tile the input exactly, the portable kernel
elsewhere), and their caches serve the portable backward passes."""

import numpy as np
import pytest

from portacnn.kernels import GpuKernels
from portacnn.kernels.pooling import pool_geometry
from portacnn.kernels.gpu import tiles_exactly

from helpers import POOL_CASES, case_id, check_pooling_against_loops
from recording import recording, wrap

G = GpuKernels()


# an exact tiling, two that leave rows or columns out and a padded one (the portable kernel's)
CASES = POOL_CASES[:4]


@pytest.mark.parametrize("kind", ["max", "min", "avg"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_gpu_pooling_matches_loops(backend, host_rng, kind, case, mode="zeros"):
    check_pooling_against_loops(G, backend, host_rng, kind, case, mode)


def test_the_cases_include_exact_tilings_and_others():
    exact = [tiles_exactly(pool_geometry(np.empty(shape), k, s, p), *shape[2:])
             for shape, k, s, p in CASES]
    assert any(exact) and not all(exact)


@pytest.mark.parametrize("kind", ["max", "min", "avg"])
def test_exact_tiles_pool_in_one_reduction(kind):
    x = wrap(np.random.default_rng(0).normal(size=(2, 3, 8, 8)).astype(np.float32))
    with recording() as rec:
        getattr(G, f"{kind}_pool2d_forward")(x, 2, inference=True)
    assert rec.ops == 1, rec.by_name
