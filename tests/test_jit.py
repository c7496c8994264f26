"""The portable kernels traced by ``jax.jit`` equal their eager results.

Each case runs a forward and its backward as one function of arrays alone (shapes, strides and
modes closed over as static values, caches staying inside the traced function), once eagerly
and once under ``jax.jit``, and compares. A kernel that reads an attribute tracers lack
(``x.device``) or decides on an array's value in Python fails here. Float64 (``make_backend``
enables x64), so the tolerance is tight. Tracing and compiling take about a second a case, so
the geometries are a few that take each route of the kernels (tests/test_kernels.py runs them
all eagerly against the loops).
"""

import numpy as np
import pytest

from portacnn import kernels as K

from helpers import CASES, POOL_CASES, assert_close, case_id, make_backend

jax = pytest.importorskip("jax", reason="jax is not installed (optional backend)")


@pytest.fixture(scope="module")
def jb():
    return make_backend("jax")


def same_under_jit(fn, *arrays):
    """Run ``fn(*arrays)`` (arrays in, a tuple of arrays out) eagerly and jitted: equal."""
    eager = fn(*arrays)
    traced = jax.jit(fn)(*arrays)
    assert len(eager) == len(traced)
    for e, t in zip(eager, traced):
        assert_close(t, np.asarray(e))


def arrays(jb, rng, *shapes):
    return [jb.asarray(rng.normal(size=s)) for s in shapes]


# stride 2 with padding; "same" at stride 3 (replicated edges); 1x1 with windows of padding only
CONV_CASES = [(CASES[1], "zeros"), (CASES[4], "replicate"), (CASES[8], "zeros")]
# windows that tile the input, windows with gaps, overlapping windows
POOL_ROUTES = [POOL_CASES[0], POOL_CASES[5], POOL_CASES[7]]


@pytest.mark.parametrize("case, mode", CONV_CASES, ids=[f"{case_id(c)}-{m}" for c, m in CONV_CASES])
def test_conv2d_traces(jb, host_rng, case, mode):
    shape, k, s, p = case
    kh, kw = (k, k) if isinstance(k, int) else k
    x, w, b = arrays(jb, host_rng, shape, (4, shape[1], kh, kw), (4,))
    y0, _ = K.conv2d_forward(x, w, b, s, p, mode)
    dy = arrays(jb, host_rng, tuple(y0.shape))[0]

    def step(x, w, b, dy):
        y, cache = K.conv2d_forward(x, w, b, s, p, mode)
        return (y, *K.conv2d_backward(dy, w, cache))

    same_under_jit(step, x, w, b, dy)


@pytest.mark.parametrize("groups, stride, padding", [(4, 2, "same")])
def test_grouped_conv2d_traces(jb, host_rng, groups, stride, padding):
    x, w = arrays(jb, host_rng, (2, 4, 7, 6), (8, 4 // groups, 3, 3))
    y0, _ = K.conv2d_forward(x, w, None, stride, padding, groups=groups)
    dy = arrays(jb, host_rng, tuple(y0.shape))[0]

    def step(x, w, dy):
        y, cache = K.conv2d_forward(x, w, None, stride, padding, groups=groups)
        dx, dw, _ = K.conv2d_backward(dy, w, cache)
        return y, dx, dw

    same_under_jit(step, x, w, dy)


@pytest.mark.parametrize("case", POOL_ROUTES, ids=case_id)
def test_pooling_traces(jb, host_rng, case):
    shape, k, s, p = case
    x = arrays(jb, host_rng, shape)[0]
    dy = arrays(jb, host_rng, tuple(K.max_pool2d_forward(x, k, s, p)[0].shape))[0]

    def step(x, dy):
        outs = []
        for kind in ("max", "min", "avg"):
            y, cache = getattr(K, f"{kind}_pool2d_forward")(x, k, s, p)
            outs += [y, getattr(K, f"{kind}_pool2d_backward")(dy, cache)]
        return tuple(outs)

    same_under_jit(step, x, dy)


def test_global_pool_dense_activations_trace(jb, host_rng):
    x4, x2, w, b, dy2 = arrays(jb, host_rng, (2, 3, 4, 5), (2, 6), (3, 6), (3,), (2, 3))

    def step(x4, x2, w, b, dy2):
        pooled, shape = K.global_avg_pool2d_forward(x4)
        dpool = K.global_avg_pool2d_backward(pooled * 2, shape)
        y = K.dense_forward(x2, w, b)
        dx, dw, db = K.dense_backward(dy2, x2, w)
        acts = []
        for f, back, uses_output in [(K.relu, K.relu_backward, False),
                                     (K.tanh, K.tanh_backward, True),
                                     (K.sigmoid, K.sigmoid_backward, True)]:
            out = f(y)
            acts += [out, back(dy2, out if uses_output else y)]
        return (pooled, dpool, y, dx, dw, db, K.softmax(y, axis=1), *acts)

    same_under_jit(step, x4, x2, w, b, dy2)


@pytest.mark.parametrize("shape", [(4, 3, 2, 2), (5, 3)])
@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_traces(jb, host_rng, shape, training):
    x, gamma, beta, mean, dy = arrays(jb, host_rng, shape, (3,), (3,), (3,), shape)
    var = jb.asarray(host_rng.uniform(0.5, 2.0, size=3))

    def step(x, gamma, beta, mean, var, dy):
        y, cache, new_mean, new_var = K.batchnorm_forward(x, gamma, beta, mean, var,
                                                          training=training, momentum=0.1)
        return (y, new_mean, new_var, *K.batchnorm_backward(dy, cache))

    same_under_jit(step, x, gamma, beta, mean, var, dy)


def test_losses_trace(jb, host_rng):
    logits, target = arrays(jb, host_rng, (4, 3), (4, 3))
    labels = jb.asarray(np.array([0, 2, 1, 2]))

    def step(logits, labels, target):
        return (*K.softmax_cross_entropy(logits, labels),
                *K.softmax_cross_entropy(logits, K.softmax(target, axis=1)),
                *K.mse(logits, target))

    same_under_jit(step, logits, labels, target)


def test_dropout_merge_upsample_trace(jb, host_rng):
    x, other, dy = arrays(jb, host_rng, (2, 3, 4, 4), (2, 3, 4, 4), (2, 6, 4, 4))
    mask = jb.asarray((host_rng.random((2, 3, 4, 4)) < 0.7).astype(np.float64))

    def step(x, other, dy, mask):
        dropped = K.dropout_forward(x, mask, 0.3)
        ddrop = K.dropout_backward(dy[:, :3], mask, 0.3)
        summed = K.add_forward([x, other])
        dadd = K.add_backward(dy[:, :3], 2)
        joined, sizes = K.concatenate_forward([x, other], axis=1)
        djoin = K.concatenate_backward(dy, sizes, axis=1)
        up = K.upsample_nearest_forward(x, 2)
        dup = K.upsample_nearest_backward(up, 2)
        return (dropped, ddrop, summed, *dadd, joined, *djoin, up, dup)

    same_under_jit(step, x, other, dy, mask)
