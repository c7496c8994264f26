"""JAX's kernel set (:mod:`portacnn.backends.jax_kernels`) against the portable kernels and the
naive loops: XLA's convolution, eagerly and traced whole under ``jax.jit`` (as a compiled
training step runs it), on the geometries the portable kernels are tested on, in float64 and
float32, both padding modes and grouped."""

import functools
import inspect

import numpy as np
import pytest

from portacnn import kernels as K
from portacnn import reference as R
from portacnn.kernels import Kernels

from helpers import CASES, SELECTED, assert_close, case_id, make_backend

pytestmark = pytest.mark.skipif("jax" not in SELECTED, reason="jax is not in the backend matrix")
CONV = ("conv2d_forward", "conv2d_backward")


@pytest.fixture(scope="module")
def jax_backend():
    return make_backend("jax")


def test_jax_runs_its_own_set_which_replaces_the_convolution_only(jax_backend):
    from portacnn.backends.jax import JaxBackend
    from portacnn.backends.jax_kernels import JaxKernels

    assert type(jax_backend) is JaxBackend and type(jax_backend.kernels) is JaxKernels
    overridden = {name for name in vars(JaxKernels) if not name.startswith("_")
                  and callable(getattr(JaxKernels, name))}
    assert overridden == set(CONV)
    for name in CONV:
        assert getattr(JaxKernels, name) is not getattr(Kernels, name)
        portable = inspect.signature(getattr(K, name)).parameters.values()
        override = inspect.signature(getattr(JaxKernels, name)).parameters.values()
        assert [(p.name, p.kind, p.default) for p in override] == \
            [(p.name, p.kind, p.default) for p in portable]


@functools.lru_cache(maxsize=None)
def _reference(case, mode, groups, filters):
    """Inputs and naive-loop results for one geometry (computed once: the loops are slow)."""
    (n, c, h, w), k, s, p = case
    kh, kw = (k, k) if isinstance(k, int) else k
    c = c * groups
    rng = np.random.default_rng(sum(map(ord, str((case, mode, groups)))))
    x, wt, b = (rng.normal(size=shape)
                for shape in ((n, c, h, w), (filters, c // groups, kh, kw), (filters,)))
    y = R.conv2d(x, wt, b, s, p, mode, groups)
    dy = rng.normal(size=y.shape)
    return (x, wt, b, dy), (y,) + tuple(R.conv2d_backward(dy, x, wt, s, p, mode, groups))


def _check(be, case, mode, groups=1, filters=4, dtype="float64", jit=False, portable=True):
    import jax

    from portacnn.backends.jax_kernels import XlaConvCache

    kernels = be.kernels
    _, _, s, p = case
    (x, w, b, dy), (y_ref, *grads_ref) = _reference(case, mode, groups, filters)
    xb, wb, bb, dyb = (be.asarray(a, dtype=dtype) for a in (x, w, b, dy))

    def step(x, w, b, dy, kernels=kernels):
        y, cache = kernels.conv2d_forward(x, w, b, s, p, mode, groups=groups)
        fast, nothing = kernels.conv2d_forward(x, w, b, s, p, mode, groups=groups,
                                               inference=True)
        assert nothing is None and (kernels is Kernels or type(cache) is XlaConvCache)
        _, dw, db = kernels.conv2d_backward(dy, w, cache, need_dx=False)
        return (y, fast) + tuple(kernels.conv2d_backward(dy, w, cache)) + (dw, db)

    run = jax.jit(step) if jit else step
    y, fast, dx, dw, db, dw_only, db_only = run(xb, wb, bb, dyb)
    got = (y, fast, dx, dw, db, dw_only, db_only)
    for value, want in zip(got, (y_ref, y_ref, *grads_ref, *grads_ref[1:])):
        assert value.dtype == xb.dtype
        assert_close(value, want, dtype)
    if portable:                 # only beside jit: eager JAX runs the portable kernels slowly
        for value, other in zip(got, step(xb, wb, bb, dyb, kernels=Kernels)):
            assert_close(value, be.to_numpy(other), dtype)


@pytest.mark.parametrize("mode", ["zeros", "replicate"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_conv_matches_loops(jax_backend, case, mode):
    _check(jax_backend, case, mode, portable=False)


@pytest.mark.parametrize("mode", ["zeros", "replicate"])
@pytest.mark.parametrize("case", CASES[1:4], ids=case_id)
def test_conv_under_jit_matches_portable_and_loops(jax_backend, case, mode):
    _check(jax_backend, case, mode, jit=True)


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("groups,filters", [(2, 4), (3, 3), (2, 6)],
                         ids=["groups2", "depthwise", "depthwise-x3"])
@pytest.mark.parametrize("case", [CASES[3]], ids=case_id)
def test_grouped_conv_matches_portable_and_loops(jax_backend, case, groups, filters, jit):
    mode = "replicate" if groups == 2 else "zeros"
    _check(jax_backend, (case[0][:1] + (1,) + case[0][2:],) + case[1:], mode, groups, filters,
           jit=jit, portable=jit)


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_conv_in_float32(jax_backend, jit):
    _check(jax_backend, ((2, 3, 9, 8), 3, 2, 1), "replicate", dtype="float32", jit=jit,
           portable=jit)


def test_conv_without_bias(jax_backend, host_rng):
    x, w = host_rng.normal(size=(2, 2, 6, 7)), host_rng.normal(size=(3, 2, 3, 3))
    y, cache = jax_backend.kernels.conv2d_forward(jax_backend.asarray(x), jax_backend.asarray(w),
                                                  None, 1, 1)
    assert_close(y, R.conv2d(x, w, None, 1, 1))
    dy = host_rng.normal(size=y.shape)
    _, _, db = jax_backend.kernels.conv2d_backward(jax_backend.asarray(dy),
                                                   jax_backend.asarray(w), cache)
    assert_close(db, dy.sum(axis=(0, 2, 3)))
