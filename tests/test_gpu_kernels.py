"""GpuKernels, CuPy's kernel set: its pooling forwards equal the naive loops on every geometry
(one reduction over a view where the windows tile the input exactly, the portable kernel
elsewhere), and their caches serve the portable backward passes."""

import numpy as np
import pytest

from portacnn import reference as R
from portacnn.kernels import GpuKernels
from portacnn.kernels.pooling import pool_geometry
from portacnn.kernels.gpu import tiles_exactly

from helpers import POOL_CASES, assert_close, case_id
from recording import recording, wrap

G = GpuKernels()


# an exact tiling, two that leave rows or columns out and a padded one (the portable kernel's)
CASES = POOL_CASES[:4]


@pytest.mark.parametrize("kind", ["max", "min", "avg"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_gpu_pooling_matches_loops(backend, host_rng, kind, case, mode="zeros"):
    shape, k, s, p = case
    x = host_rng.normal(size=shape)
    fwd, bwd = getattr(G, f"{kind}_pool2d_forward"), getattr(G, f"{kind}_pool2d_backward")
    ref_fwd, ref_bwd = getattr(R, f"{kind}_pool2d"), getattr(R, f"{kind}_pool2d_backward")
    y_ref = ref_fwd(x, k, s, p, mode)
    y, cache = fwd(backend.asarray(x), k, s, p, mode)
    assert_close(y, y_ref)
    fast, nothing = fwd(backend.asarray(x), k, s, p, mode, inference=True)
    assert nothing is None
    assert_close(fast, y_ref)
    dy = host_rng.normal(size=y_ref.shape)
    assert_close(bwd(backend.asarray(dy), cache), ref_bwd(dy, x, k, s, p, mode))


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
