"""The NumPy backend's CPU overrides (:mod:`portacnn.kernels.cpu`) against the portable kernels
and the naive loops, on the geometries the portable kernels are tested on.

The overrides are array-API code that writes into arrays it made: they run here on NumPy (where
they are selected), on array_api_strict (which proves they use only the standard; its
``device1`` catches arrays made on the default device) and on torch. Both convolution routes
run on every geometry, and each test checks which route ran (by the cache's type), so no test
can exercise one route twice.
"""

import functools
import inspect

import numpy as np
import pytest

from portacnn import kernels as K
from portacnn import reference as R
from portacnn.backends import get_backend
from portacnn.kernels import CpuKernels, Kernels, cpu_conv, cpu_folded, cpu_pooling
from portacnn.kernels.cpu_folded import FoldedCache
from portacnn.kernels.shapes import geometry
from portacnn.kernels.columns import im2col

from helpers import CASES, POOL_CASES, SELECTED, assert_close, case_id, make_backend

CONV = ("conv2d_forward", "conv2d_backward")
POOLS = tuple(f"{kind}_pool2d_{step}" for kind in ("max", "min", "avg")
              for step in ("forward", "backward"))
ACTIVATIONS = ("relu_backward",)


@pytest.fixture(params=[b for b in SELECTED
                        if b in ("numpy", "array_api_strict", "strict-device1", "torch")])
def mutable_backend(request):
    """The backends whose arrays can be written: the overrides' in-place code runs on them."""
    return make_backend(request.param)


# --- selection ------------------------------------------------------------------------------

def test_numpy_backend_runs_the_cpu_set_and_others_the_portable_one():
    assert type(get_backend("cpu").kernels) is CpuKernels
    assert type(get_backend("array_api_strict").kernels) is Kernels
    overridden = {name for name in vars(CpuKernels) if not name.startswith("_")
                  and callable(getattr(CpuKernels, name))}
    assert overridden == set(CONV + POOLS + ACTIVATIONS)
    for name in overridden:                      # an override replaces the portable function
        assert getattr(CpuKernels, name) is not getattr(K, name)
        assert getattr(Kernels, name) is getattr(K, name)


@pytest.mark.parametrize("name", sorted(CONV + POOLS + ACTIVATIONS))
def test_an_override_takes_the_arguments_of_its_portable_kernel(name):
    portable = inspect.signature(getattr(K, name)).parameters
    override = inspect.signature(getattr(CpuKernels, name)).parameters
    assert [(p.name, p.kind, p.default) for p in override.values()] == \
        [(p.name, p.kind, p.default) for p in portable.values()]


# --- convolution ----------------------------------------------------------------------------

# route: (what choose_route answers, bytes of columns per chunk, bytes of columns kept, the
# cache that route keeps). "folded_kept" runs the folded route one image per chunk keeping
# each chunk's columns; "folded_rebuilt" keeps none and builds them again backward.
ROUTES = {"batch_minor": ("batch_minor", cpu_conv.COLUMN_CHUNK, cpu_conv.COLUMN_BUDGET,
                          cpu_conv.RowBlockCache),
          "folded": ("folded", cpu_conv.COLUMN_CHUNK, cpu_conv.COLUMN_BUDGET, FoldedCache),
          "folded_kept": ("folded", 1, cpu_conv.COLUMN_BUDGET, FoldedCache),
          "folded_rebuilt": ("folded", 1, 0, FoldedCache)}


def _force(monkeypatch, route):
    """Every convolution takes ``route`` where it fits, the folded route elsewhere."""
    answer, chunk, budget, _ = ROUTES[route]
    fit = cpu_conv.routes_that_fit
    monkeypatch.setattr(cpu_conv, "choose_route",
                        lambda g, ws, groups, inference: answer if answer in fit(g, ws, groups)
                        else "folded")
    monkeypatch.setattr(cpu_conv, "COLUMN_CHUNK", chunk)
    monkeypatch.setattr(cpu_conv, "COLUMN_BUDGET", budget)


@functools.lru_cache(maxsize=None)
def _conv_reference(case, mode):
    """Inputs and naive-loop results for one geometry (computed once: the loops are slow)."""
    shape, k, s, p = case
    kh, kw = (k, k) if isinstance(k, int) else k
    rng = np.random.default_rng(sum(map(ord, str((case, mode)))))
    x = rng.normal(size=shape)
    w = rng.normal(size=(4, shape[1], kh, kw))
    b = rng.normal(size=4)
    y = R.conv2d(x, w, b, s, p, mode)
    dy = rng.normal(size=y.shape)
    return (x, w, b, dy), (y,) + tuple(R.conv2d_backward(dy, x, w, s, p, mode))


def _check_conv(be, case, mode, route, dtype="float64"):
    shape, k, s, p = case
    (x, w, b, dy), (y_ref, dx_ref, dw_ref, db_ref) = _conv_reference(case, mode)
    xb, wb, bb, dyb = (be.asarray(a, dtype=dtype) for a in (x, w, b, dy))
    y, cache = cpu_conv.conv2d_forward(xb, wb, bb, s, p, mode)
    assert type(cache) is ROUTES[route][3]
    if route.startswith("folded_"):
        assert cache.chunk == 1 and (cache.cols is None) == (route == "folded_rebuilt")
    y_portable, cache_portable = K.conv2d_forward(xb, wb, bb, s, p, mode)
    assert_close(y, y_ref, dtype)
    assert_close(y, be.to_numpy(y_portable), dtype)

    fast, nothing = cpu_conv.conv2d_forward(xb, wb, bb, s, p, mode, inference=True)
    assert nothing is None
    assert_close(fast, y_ref, dtype)

    grads = cpu_conv.conv2d_backward(dyb, wb, cache)
    portable = K.conv2d_backward(dyb, wb, cache_portable)
    for got, other, want in zip(grads, portable, (dx_ref, dw_ref, db_ref)):
        assert_close(got, want, dtype)
        assert_close(got, be.to_numpy(other), dtype)
    no_dx, dw, db = cpu_conv.conv2d_backward(dyb, wb, cache, need_dx=False)
    assert no_dx is None
    assert_close(dw, dw_ref, dtype)
    assert_close(db, db_ref, dtype)


@pytest.mark.parametrize("route", sorted(ROUTES))
@pytest.mark.parametrize("mode", ["zeros", "replicate"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_conv_override_matches_portable_and_loops(mutable_backend, monkeypatch, case, mode,
                                                  route):
    _force(monkeypatch, route)
    _check_conv(mutable_backend, case, mode, route)


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_conv_override_in_float32(mutable_backend, monkeypatch, route):
    _force(monkeypatch, route)
    _check_conv(mutable_backend, ((2, 3, 9, 8), 3, 1, 1), "zeros", route, "float32")


@pytest.mark.parametrize("route", ["folded", "folded_kept", "folded_rebuilt"])
@pytest.mark.parametrize("groups,filters", [(2, 4), (4, 4), (4, 8)],
                         ids=["groups2", "depthwise", "depthwise-x2"])
@pytest.mark.parametrize("case", CASES[:4], ids=case_id)
def test_grouped_conv_override_matches_portable_and_loops(mutable_backend, monkeypatch, case,
                                                          groups, filters, route):
    _force(monkeypatch, route)
    be = mutable_backend
    (n, _, h, w), k, s, p = case
    kh, kw = (k, k) if isinstance(k, int) else k
    rng = np.random.default_rng(sum(map(ord, str((case, groups)))))
    x, wt, b = (rng.normal(size=shape)
                for shape in ((n, 4, h, w), (filters, 4 // groups, kh, kw), (filters,)))
    y_ref = R.conv2d(x, wt, b, s, p, "zeros", groups)
    dy = rng.normal(size=y_ref.shape)
    grads_ref = R.conv2d_backward(dy, x, wt, s, p, "zeros", groups)
    xb, wb, bb, dyb = (be.asarray(a) for a in (x, wt, b, dy))
    y, cache = cpu_conv.conv2d_forward(xb, wb, bb, s, p, groups=groups)
    assert type(cache) is FoldedCache
    y_portable, cache_portable = K.conv2d_forward(xb, wb, bb, s, p, groups=groups)
    assert_close(y, y_ref)
    assert_close(y, be.to_numpy(y_portable))
    fast, _ = cpu_conv.conv2d_forward(xb, wb, bb, s, p, groups=groups, inference=True)
    assert_close(fast, y_ref)
    grads = cpu_conv.conv2d_backward(dyb, wb, cache)
    portable = K.conv2d_backward(dyb, wb, cache_portable)
    for got, other, want in zip(grads, portable, grads_ref):
        assert_close(got, want)
        assert_close(got, be.to_numpy(other))


def test_conv_without_bias(mutable_backend, host_rng):
    be = mutable_backend
    x, w = host_rng.normal(size=(2, 2, 6, 20)), host_rng.normal(size=(3, 2, 3, 3))
    for width in (6, 20):                                        # both routes
        y, cache = cpu_conv.conv2d_forward(be.asarray(x[..., :width]), be.asarray(w), None, 1, 1)
        assert_close(y, R.conv2d(x[..., :width], w, None, 1, 1))
        fast, _ = cpu_conv.conv2d_forward(be.asarray(x[..., :width]), be.asarray(w), None, 1, 1,
                                     inference=True)
        assert_close(fast, R.conv2d(x[..., :width], w, None, 1, 1))


@pytest.mark.parametrize("inference", [False, True])
def test_the_route_follows_the_output_width_1x1_kernels_and_groups(inference):
    short = cpu_conv.INFERENCE_SHORT_ROW if inference else cpu_conv.SHORT_ROW
    entry = {"folded": "folded_forward", "batch_minor": "_by_output_rows",
             "pointwise": "pointwise_forward"}
    for width, kernel, padding, groups, route in (
            (short - 1, 3, 0, 1, "batch_minor"), (short, 3, 0, 1, "folded"),
            (2, 3, 0, 2, "folded"), (2, 1, 0, 1, "pointwise"), (2, 1, 0, 2, "pointwise"),
            (2, 1, 1, 1, "folded")):
        x = np.ones((2, 2, 4, width + kernel - 1 - 2 * padding))   # output width `width`
        w = np.ones((2, 2 // groups, kernel, kernel))
        calls = []
        with pytest.MonkeyPatch.context() as mp:
            for name in entry.values():
                real = getattr(cpu_conv, name)
                mp.setattr(cpu_conv, name, lambda *a, real=real, name=name: calls.append(name)
                           or real(*a))
            y, cache = cpu_conv.conv2d_forward(x, w, None, 1, padding, groups=groups,
                                               inference=inference)
        assert calls == [entry[route]], (width, kernel, padding, groups)
        assert_close(y, R.conv2d(x, w, None, 1, padding, groups=groups))


@pytest.mark.parametrize("stride", [1, 2, (2, 1), 3])
@pytest.mark.parametrize("groups", [1, 2])
def test_pointwise_route_matches_portable_and_loops(mutable_backend, host_rng, stride, groups):
    be = mutable_backend
    x, w, b = (host_rng.normal(size=s) for s in ((2, 4, 7, 6), (6, 4 // groups, 1, 1), (6,)))
    y_ref = R.conv2d(x, w, b, stride, 0, "zeros", groups)
    dy = host_rng.normal(size=y_ref.shape)
    grads_ref = R.conv2d_backward(dy, x, w, stride, 0, "zeros", groups)
    xb, wb, bb, dyb = (be.asarray(a) for a in (x, w, b, dy))
    y, cache = cpu_conv.conv2d_forward(xb, wb, bb, stride, groups=groups)
    assert type(cache) is cpu_conv.PointwiseCache
    assert_close(y, y_ref)
    y_portable, cache_portable = K.conv2d_forward(xb, wb, bb, stride, groups=groups)
    assert_close(y, be.to_numpy(y_portable))
    fast, nothing = cpu_conv.conv2d_forward(xb, wb, bb, stride, groups=groups, inference=True)
    assert nothing is None
    assert_close(fast, y_ref)
    for got, other, want in zip(cpu_conv.conv2d_backward(dyb, wb, cache),
                                K.conv2d_backward(dyb, wb, cache_portable), grads_ref):
        assert_close(got, want)
        assert_close(got, be.to_numpy(other))
    no_dx, dw, _ = cpu_conv.conv2d_backward(dyb, wb, cache, need_dx=False)
    assert no_dx is None
    assert_close(dw, grads_ref[1])


@pytest.mark.parametrize("kept", [True, False])
def test_the_folded_route_builds_columns_a_chunk_at_a_time(host_rng, monkeypatch, kept):
    # The column buffer holds as many images as fit a chunk, whatever the batch. A batch whose
    # columns exceed the budget keeps its input, not its columns, and builds them again
    # chunk by chunk in the backward pass.
    x = host_rng.normal(size=(7, 2, 6, 6))
    w = host_rng.normal(size=(3, 2, 3, 3))
    per_image = 2 * 9 * 4 * 4 * 8                                # C*kh*kw*OH*OW float64s
    sizes = []
    real = cpu_folded.folded_columns
    monkeypatch.setattr(cpu_folded, "folded_columns",
                        lambda part, g, out=None: sizes.append(part.shape[0]) or real(part, g, out))
    monkeypatch.setattr(cpu_conv, "COLUMN_CHUNK", 3 * per_image)
    monkeypatch.setattr(cpu_conv, "COLUMN_BUDGET", 7 * per_image if kept else 7 * per_image - 1)
    monkeypatch.setattr(cpu_conv, "choose_route", lambda *args: "folded")
    y, cache = cpu_conv.conv2d_forward(x, w, None)
    assert type(cache) is FoldedCache and cache.chunk == 3
    assert (cache.cols is not None, cache.x is None) == (kept, kept)
    dx, dw, _ = cpu_conv.conv2d_backward(np.ones(y.shape), w, cache)
    assert sizes == [3, 3, 1] * (1 if kept else 2)               # forward (then backward)
    rdx, rdw, _ = R.conv2d_backward(np.ones(y.shape), x, w)
    assert_close(dx, rdx)
    assert_close(dw, rdw)


def test_batch_minor_training_output_and_dx_are_row_major_inference_output_a_view():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 2, 6, 6)).astype(np.float32)
    w = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    y, cache = cpu_conv.conv2d_forward(x, w, None)
    assert isinstance(cache, cpu_conv.RowBlockCache)
    assert y.flags["C_CONTIGUOUS"]          # the backward passes after it see one layout
    dx, _, _ = cpu_conv.conv2d_backward(np.ones(y.shape, np.float32), w, cache)
    assert dx.flags["C_CONTIGUOUS"]
    fast, _ = cpu_conv.conv2d_forward(x, w, None, inference=True)
    # (N, F, OH, OW) over (F, OH, OW, N) memory: the batch is the innermost axis
    assert fast.strides[0] == fast.itemsize
    np.testing.assert_allclose(fast, y, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stride, padding, mode", [(1, 0, "zeros"), ((2, 1), 1, "zeros"),
                                                   ((1, 3), (2, 1), "replicate")])
def test_row_blocks_hold_each_output_rows_columns(mutable_backend, host_rng, stride, padding,
                                                  mode):
    n, c, h, w, kh, kw = 2, 3, 7, 8, 3, 2
    x = host_rng.normal(size=(n, c, h, w))
    g = geometry((h, w), (kh, kw), stride, padding, mode)
    blocks = mutable_backend.to_numpy(cpu_conv.row_blocks(mutable_backend.asarray(x), g))
    assert blocks.shape == (g.padded_hw(h, w)[0], kw * c * g.ow * n)
    cols = im2col(x, g)                                     # (N, C*kh*kw, OH*OW)
    want = np.transpose(cols.reshape(n, c, kh, kw, g.oh, g.ow), (4, 2, 3, 1, 5, 0))
    for r in range(g.oh):
        got = blocks[r * g.sh:r * g.sh + kh].reshape(kh, kw, c, g.ow, n)
        np.testing.assert_array_equal(got, want[r])


def test_uncovered_border_gets_zero_gradient_on_both_routes(host_rng):
    x = host_rng.normal(size=(1, 1, 9, 9))
    w = host_rng.normal(size=(1, 1, 2, 2))
    for route in ROUTES:
        with pytest.MonkeyPatch.context() as mp:
            _force(mp, route)
            y, cache = cpu_conv.conv2d_forward(x, w, None, 3, 0)   # windows cover rows 0-1, 3-4, 6-7
        assert type(cache) is ROUTES[route][3]
        dx, _, _ = cpu_conv.conv2d_backward(np.ones(y.shape), w, cache)
        for row in (2, 5, 8):                                 # 8: the border the stride leaves
            assert np.all(dx[0, 0, row, :] == 0) and np.all(dx[0, 0, :, row] == 0)
        assert np.all(dx[0, 0, 0, [0, 1, 3, 4, 6, 7]] != 0)


# --- pooling --------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _pool_reference(case, kind, mode):
    shape, k, s, p = case
    rng = np.random.default_rng(sum(map(ord, str((case, kind, mode)))))
    x = rng.normal(size=shape)
    x[..., ::3, ::2] = 0.0                     # ties, as after ReLU: the first one wins
    y = getattr(R, f"{kind}_pool2d")(x, k, s, p, mode)
    dy = rng.normal(size=y.shape)
    return x, dy, y, getattr(R, f"{kind}_pool2d_backward")(dy, x, k, s, p, mode)


@pytest.mark.parametrize("mode", ["zeros", "replicate"])
@pytest.mark.parametrize("kind", ["max", "min", "avg"])
@pytest.mark.parametrize("case", POOL_CASES, ids=case_id)
def test_pool_override_matches_portable_and_loops(mutable_backend, case, kind, mode):
    be = mutable_backend
    shape, k, s, p = case
    x, dy, y_ref, dx_ref = _pool_reference(case, kind, mode)
    forward, backward = getattr(CpuKernels, f"{kind}_pool2d_forward"), \
        getattr(CpuKernels, f"{kind}_pool2d_backward")
    y, cache = forward(be.asarray(x), k, s, p, mode)
    y_portable, cache_portable = getattr(K, f"{kind}_pool2d_forward")(be.asarray(x), k, s, p, mode)
    assert_close(y, y_ref)
    assert_close(y, be.to_numpy(y_portable))
    fast, nothing = forward(be.asarray(x), k, s, p, mode, inference=True)
    assert nothing is None
    assert_close(fast, y_ref)
    dx = backward(be.asarray(dy), cache)
    assert_close(dx, dx_ref)
    assert_close(dx, be.to_numpy(getattr(K, f"{kind}_pool2d_backward")(be.asarray(dy),
                                                                       cache_portable)))


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pool_override_in_float32(mutable_backend, host_rng, kind):
    be = mutable_backend
    x = host_rng.normal(size=(2, 3, 8, 9))
    y, cache = getattr(CpuKernels, f"{kind}_pool2d_forward")(be.asarray(x, dtype="float32"), 2)
    assert_close(y, getattr(R, f"{kind}_pool2d")(x, 2), "float32")
    dy = host_rng.normal(size=tuple(y.shape))
    dx = getattr(CpuKernels, f"{kind}_pool2d_backward")(be.asarray(dy, dtype="float32"), cache)
    assert_close(dx, getattr(R, f"{kind}_pool2d_backward")(dy, x, 2), "float32")


def test_max_pool_override_sends_the_gradient_to_the_first_maximum_only(mutable_backend):
    x = np.zeros((1, 1, 4, 4))
    x[0, 0, 1, 1] = 1.0                     # one window with a unique max, three all-tied
    for stride in (2, 1):                   # non-overlapping (assigned) and overlapping (added)
        y, cache = cpu_pooling.max_pool2d_forward(mutable_backend.asarray(x), 2, stride)
        dy = np.ones(tuple(y.shape))
        dx = mutable_backend.to_numpy(cpu_pooling.max_pool2d_backward(mutable_backend.asarray(dy),
                                                              cache))
        np.testing.assert_array_equal(dx, R.max_pool2d_backward(dy, x, 2, stride))


# --- inputs stay untouched ------------------------------------------------------------------

def test_overrides_write_into_no_input_and_return_no_view_of_one(host_rng):
    x = host_rng.normal(size=(2, 3, 6, 20))
    w, b = host_rng.normal(size=(4, 3, 3, 3)), host_rng.normal(size=4)
    kept = [a.copy() for a in (x, w, b)]
    for width in (6, 20):                                        # both routes
        part = x[..., :width]
        y, cache = cpu_conv.conv2d_forward(part, w, b, 1, 1)
        dy = host_rng.normal(size=y.shape)
        dy_kept = dy.copy()
        cpu_conv.conv2d_backward(dy, w, cache)
        cpu_conv.conv2d_forward(part, w, b, 1, 1, inference=True)
        np.testing.assert_array_equal(dy, dy_kept)
    for name in ("max", "min", "avg"):
        for k, s in ((2, None), (1, 1), (3, 1)):                 # 1x1: a window is a pixel
            for inference in (False, True):
                y, cache = getattr(CpuKernels, f"{name}_pool2d_forward")(x, k, s, inference=inference)
                assert not np.shares_memory(y, x)
                if cache is not None:
                    dy = np.ones(y.shape)
                    dx = getattr(CpuKernels, f"{name}_pool2d_backward")(dy, cache)
                    assert not np.shares_memory(dx, dy)
                    np.testing.assert_array_equal(dy, 1.0)
    for before, after in zip(kept, (x, w, b)):
        np.testing.assert_array_equal(before, after)


def test_overrides_raise_the_portable_kernels_errors(host_rng):
    import array_api_strict as strict

    x = host_rng.normal(size=(2, 3, 8, 8))
    w = host_rng.normal(size=(4, 3, 3, 3))
    with pytest.raises(ValueError, match=r"input has 2 channel\(s\) but the weight expects 3"):
        cpu_conv.conv2d_forward(x[:, :2], w)
    with pytest.raises(ValueError, match=r"kernel 3x3 is larger than the padded input 2x2"):
        cpu_conv.conv2d_forward(x[:, :, :2, :2], w)
    with pytest.raises(ValueError, match="more than half the kernel"):
        cpu_pooling.max_pool2d_forward(x, 2, 2, 2)
    with pytest.raises(TypeError, match="arrays from different libraries were mixed"):
        cpu_conv.conv2d_forward(np.ones((1, 1, 4, 4)), strict.ones((1, 1, 2, 2)))


def test_relu_backward_override_matches_the_portable_kernel():
    """The mask multiplication gives the portable ``where``'s values: dy where x > 0, else 0
    (at 0, for negative x and NaN x alike), in the input's dtype."""
    from portacnn.kernels import activations
    from portacnn.kernels.cpu import CpuKernels

    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 4, 5, 5)).astype(np.float32)
    x[0, 0, 0, :3] = (0.0, -0.0, np.nan)
    dy = rng.normal(size=x.shape).astype(np.float32)
    got = CpuKernels.relu_backward(dy, x)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, activations.relu_backward(dy, x))
    assert CpuKernels.relu_backward is not activations.relu_backward
