"""Every kernel against the naive loop references, on every backend."""

import numpy as np
import pytest

from portacnn import kernels as K
from portacnn import reference as R
from portacnn.kernels.pooling import pool_geometry, windows_tile
from portacnn.kernels.shapes import geometry

from helpers import CASES, POOL_CASES, assert_close, case_id, check_pooling_against_loops


@pytest.mark.parametrize("mode", ["zeros", "replicate"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_im2col_matches_loops(backend, host_rng, case, mode):
    shape, k, s, p = case
    x = host_rng.normal(size=shape)
    g = geometry(shape[2:], k, s, p, mode)
    assert_close(K.im2col(backend.asarray(x), g), R.im2col(x, k, s, p, mode))


@pytest.mark.parametrize("mode", ["zeros", "replicate"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_col2im_is_adjoint_of_im2col(backend, host_rng, case, mode):
    shape, k, s, p = case
    x = host_rng.normal(size=shape)
    geo = geometry(shape[2:], k, s, p, mode)
    cols = K.im2col(backend.asarray(x), geo)
    g = host_rng.normal(size=tuple(cols.shape))
    lhs = float(np.sum(backend.to_numpy(cols) * g))
    back = K.col2im(backend.asarray(g), geo, shape)
    rhs = float(np.sum(x * backend.to_numpy(back)))
    assert abs(lhs - rhs) <= 1e-10 * max(abs(lhs), 1.0)


@pytest.mark.parametrize("mode", ["zeros", "replicate"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_conv2d_forward_backward_match_loops(backend, host_rng, case, mode):
    shape, k, s, p = case
    kh, kw = (k, k) if isinstance(k, int) else k
    x = host_rng.normal(size=shape)
    w = host_rng.normal(size=(4, shape[1], kh, kw))
    b = host_rng.normal(size=4)
    xb, wb, bb = backend.asarray(x), backend.asarray(w), backend.asarray(b)
    y, cache = K.conv2d_forward(xb, wb, bb, s, p, mode)
    y_ref = R.conv2d(x, w, b, s, p, mode)
    assert_close(y, y_ref)
    fast, nothing = K.conv2d_forward(xb, wb, bb, s, p, mode, inference=True)
    assert nothing is None             # inference keeps nothing
    assert_close(fast, y_ref)
    dy = host_rng.normal(size=y_ref.shape)
    dx, dw, db = K.conv2d_backward(backend.asarray(dy), wb, cache)
    rdx, rdw, rdb = R.conv2d_backward(dy, x, w, s, p, mode)
    assert_close(dx, rdx)
    assert_close(dw, rdw)
    assert_close(db, rdb)
    no_dx, dw2, db2 = K.conv2d_backward(backend.asarray(dy), wb, cache, need_dx=False)
    assert no_dx is None
    assert_close(dw2, rdw)
    assert_close(db2, rdb)


@pytest.mark.parametrize("groups,filters,stride,padding,mode", [
    (2, 4, (3, 2), 1, "replicate"), (4, 8, 1, 3, "zeros")],
    ids=["groups2-s3x2-replicate", "depthwise-x2-wide-padding"])
def test_grouped_conv2d_backward_matches_loops(backend, host_rng, groups, filters, stride,
                                               padding, mode):
    # The input gradient is a convolution with the weight transposed per group (conv.py); a
    # padding of 3 is wider than the kernel (3, 2) less one: dy's outer rows are cut off.
    x = host_rng.normal(size=(2, 4, 7, 6))
    w = host_rng.normal(size=(filters, 4 // groups, 3, 2))
    y, cache = K.conv2d_forward(backend.asarray(x), backend.asarray(w), None, stride, padding,
                                mode, groups=groups)
    dy = host_rng.normal(size=tuple(y.shape))
    dx, dw, _ = K.conv2d_backward(backend.asarray(dy), backend.asarray(w), cache)
    rdx, rdw, _ = R.conv2d_backward(dy, x, w, stride, padding, mode, groups)
    assert_close(dx, rdx)
    assert_close(dw, rdw)


@pytest.mark.parametrize("stride", [1, 2])
def test_pointwise_conv2d_input_gradient_with_padding_only_windows(host_rng, stride):
    # 1x1 at stride 1: the framed dy is dy itself, its padding rows cut off (a view).
    x, w = host_rng.normal(size=(2, 3, 5, 4)), host_rng.normal(size=(2, 3, 1, 1))
    y, cache = K.conv2d_forward(x, w, None, stride, 2)
    dy = host_rng.normal(size=y.shape)
    assert_close(K.conv2d_backward(dy, w, cache)[0], R.conv2d_backward(dy, x, w, stride, 2)[0])


def test_conv2d_without_bias_in_float32(backend, host_rng):
    x = host_rng.normal(size=(2, 3, 9, 8))
    w = host_rng.normal(size=(5, 3, 3, 3))
    y, cache = K.conv2d_forward(backend.asarray(x, dtype="float32"),
                                backend.asarray(w, dtype="float32"), None, 1, 1)
    assert_close(y, R.conv2d(x, w, None, 1, 1), "float32")
    dy = host_rng.normal(size=tuple(y.shape))
    dx, dw, db = K.conv2d_backward(backend.asarray(dy, dtype="float32"),
                                   backend.asarray(w, dtype="float32"), cache)
    for got, want in zip((dx, dw, db), R.conv2d_backward(dy, x, w, 1, 1)):
        assert_close(got, want, "float32")


def test_uncovered_border_gets_zero_gradient(host_rng):
    x = host_rng.normal(size=(1, 1, 9, 9))
    w = host_rng.normal(size=(1, 1, 2, 2))
    y, cache = K.conv2d_forward(x, w, None, 3, 0)   # windows cover rows 0-1, 3-4, 6-7
    dx, _, _ = K.conv2d_backward(np.ones(y.shape), w, cache)
    for row in (2, 5, 8):                           # 8 is the border the stride leaves out
        assert np.all(dx[0, 0, row, :] == 0) and np.all(dx[0, 0, :, row] == 0)
    assert np.all(dx[0, 0, 0, [0, 1, 3, 4, 6, 7]] != 0)


@pytest.mark.parametrize("mode", ["zeros", "replicate"])
@pytest.mark.parametrize("kind", ["max", "min", "avg"])
@pytest.mark.parametrize("case", POOL_CASES, ids=case_id)
def test_pooling_matches_loops(backend, host_rng, kind, case, mode):
    check_pooling_against_loops(K, backend, host_rng, kind, case, mode)


def _pool_route_shapes(case, mode):
    """The shapes of the pooling kernels' routes (kernels/pooling.py) a geometry takes."""
    shape, k, s, p = case
    g = pool_geometry(np.empty(shape), k, s, p, mode)
    if not windows_tile(g):
        return {"overlapping"}
    hp, wp = g.padded_hw(*shape[2:])
    found = {"tiles"}
    if g.padded:
        found.add(f"tiles, {mode} padding")
    if (g.sh, g.sw) != (g.kh, g.kw):
        found.add("tiles with gaps")
    if hp < g.oh * g.sh or wp < g.ow * g.sw:
        found.add("tiles past the padded input's edge")
    if g.oh * g.sh < hp or g.ow * g.sw < wp:
        found.add("tiles leave rows or columns out")
    if g.bottom and g.oh * g.sh > hp - g.bottom:
        found.add("tiles reach the bottom padding")
    return found


def test_pool_cases_take_every_route():
    """test_pooling_matches_loops meets each route of the pooling kernels on every backend."""
    found = set().union(*(_pool_route_shapes(case, mode) for case in POOL_CASES
                          for mode in ("zeros", "replicate")))
    assert found == {"overlapping", "tiles", "tiles, zeros padding", "tiles, replicate padding",
                     "tiles with gaps", "tiles past the padded input's edge",
                     "tiles leave rows or columns out", "tiles reach the bottom padding"}


def test_max_pool_gradient_goes_to_first_maximum_only(backend):
    # After ReLU many windows tie at 0: the whole gradient goes to one element, the first.
    x = np.zeros((1, 1, 4, 4))
    x[0, 0, 1, 1] = 1.0                     # one window with a unique max, three all-tied
    y, cache = K.max_pool2d_forward(backend.asarray(x), 2)
    dx = backend.to_numpy(K.max_pool2d_backward(backend.asarray(np.ones((1, 1, 2, 2))), cache))
    expected = np.zeros((4, 4))
    expected[1, 1] = expected[0, 2] = expected[2, 0] = expected[2, 2] = 1.0
    assert np.array_equal(dx[0, 0], expected)


@pytest.mark.parametrize("n,i,o", [(1, 5, 3), (4, 7, 2)])
def test_dense_matches_loops(backend, host_rng, n, i, o):
    x, w, b = host_rng.normal(size=(n, i)), host_rng.normal(size=(o, i)), host_rng.normal(size=o)
    y = K.dense_forward(backend.asarray(x), backend.asarray(w), backend.asarray(b))
    assert_close(y, R.dense(x, w, b))
    dy = host_rng.normal(size=(n, o))
    dx, dw, db = K.dense_backward(backend.asarray(dy), backend.asarray(x), backend.asarray(w))
    for got, want in zip((dx, dw, db), R.dense_backward(dy, x, w)):
        assert_close(got, want)


def test_activations_values(backend):
    x = backend.asarray([[-1000.0, -2.0, 0.0, 3.0, 1000.0]], dtype="float64")
    xh = np.array([[-1000.0, -2.0, 0.0, 3.0, 1000.0]])
    assert_close(K.relu(x), np.maximum(xh, 0), scale=1.0)
    assert_close(K.tanh(x), np.tanh(xh))
    sig = backend.to_numpy(K.sigmoid(x))
    assert np.all(np.isfinite(sig))
    assert_close(sig, [[0.0, 1 / (1 + np.exp(2.0)), 0.5, 1 / (1 + np.exp(-3.0)), 1.0]])
    dy = backend.asarray(np.ones((1, 5)))
    assert_close(K.relu_backward(dy, x), [[0, 0, 0, 1, 1]])


def test_softmax_stable_for_large_logits(backend):
    logits = np.array([[1000.0, 1001.0, 1002.0], [-1000.0, 0.0, 1000.0]])
    p = backend.to_numpy(K.softmax(backend.asarray(logits)))
    shifted = np.array([[0.0, 1.0, 2.0]])
    assert np.all(np.isfinite(p))
    assert_close(p[0], (np.exp(shifted) / np.exp(shifted).sum())[0])
    logp = backend.to_numpy(K.log_softmax(backend.asarray(logits)))
    assert np.all(np.isfinite(logp))
    assert_close(logp[1], [-2000.0, -1000.0, 0.0], scale=2000.0)


def test_cross_entropy_integer_and_onehot(backend, host_rng):
    logits = host_rng.normal(size=(5, 4)) * 10
    labels = np.array([0, 3, 1, 1, 2])
    loss, grad = K.softmax_cross_entropy(backend.asarray(logits), backend.asarray(labels))
    assert abs(float(loss) - R.softmax_cross_entropy(logits, labels)) < 1e-10
    onehot = np.eye(4)[labels]
    loss2, grad2 = K.softmax_cross_entropy(backend.asarray(logits), backend.asarray(onehot))
    assert abs(float(loss2) - float(loss)) < 1e-12
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    assert_close(grad, (e / e.sum(axis=1, keepdims=True) - onehot) / 5)
    assert_close(grad2, backend.to_numpy(grad))


def test_mse_value_and_gradient(backend, host_rng):
    p, t = host_rng.normal(size=(3, 4)), host_rng.normal(size=(3, 4))
    loss, grad = K.mse(backend.asarray(p), backend.asarray(t))
    assert abs(float(loss) - R.mse(p, t)) < 1e-12
    assert_close(grad, 2 * (p - t) / p.size)


def test_dropout_inverted_scaling(backend):
    x = backend.asarray(np.full((2, 4), 3.0))
    mask = backend.asarray(np.array([[1.0, 0, 1, 0], [0, 0, 1, 1]]))
    assert_close(K.dropout_forward(x, mask, 0.5), [[6, 0, 6, 0], [0, 0, 6, 6]])
    assert_close(K.dropout_backward(x, mask, 0.5), [[6, 0, 6, 0], [0, 0, 6, 6]])


@pytest.mark.parametrize("h,k,s,expected", [(28, 5, 1, 28), (28, 5, 2, 14), (7, 3, 2, 4), (8, 2, 3, 3)])
def test_same_padding_follows_tensorflow(h, k, s, expected):
    g = geometry((h, h), k, s, "same")
    assert g.oh == expected == -(-h // s)
    assert g.top <= g.bottom <= g.top + 1


# --- bad input ------------------------------------------------------------------------------

def test_bad_inputs_have_clear_messages(host_rng):
    x = host_rng.normal(size=(2, 3, 8, 8))
    w = host_rng.normal(size=(4, 3, 3, 3))
    with pytest.raises(ValueError, match=r"must be 4-D \(N, C, H, W\), got shape \(3, 8, 8\)"):
        K.conv2d_forward(x[0], w)
    with pytest.raises(ValueError, match=r"input has 2 channel\(s\) but the weight expects 3"):
        K.conv2d_forward(x[:, :2], w)
    with pytest.raises(ValueError, match=r"kernel 3x3 is larger than the padded input 2x2"):
        K.conv2d_forward(x[:, :, :2, :2], w)
    with pytest.raises(ValueError, match="stride must be a positive"):
        K.conv2d_forward(x, w, stride=0)
    with pytest.raises(ValueError, match="stride must be a positive"):
        K.max_pool2d_forward(x, 2, stride=(1, -1))
    with pytest.raises(ValueError, match="padding must be an int, a pair, 'same' or 'valid'"):
        geometry((8, 8), 3, 1, "full")
    with pytest.raises(ValueError, match="padding must be non-negative"):
        geometry((8, 8), 3, 1, -1)
    with pytest.raises(ValueError, match="put a Flatten layer before Dense"):
        K.dense_forward(x, host_rng.normal(size=(4, 3)))
    with pytest.raises(ValueError, match="3 labels for a batch of 2"):
        K.softmax_cross_entropy(host_rng.normal(size=(2, 4)), np.array([0, 1, 2]))
    with pytest.raises(TypeError, match="integer class labels expected"):
        K.softmax_cross_entropy(host_rng.normal(size=(2, 4)), np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="mse: prediction shape"):
        K.mse(np.ones((2, 3)), np.ones((3, 2)))


def test_kernel_mixing_namespaces_is_caught():
    import array_api_strict as strict

    with pytest.raises(TypeError, match="arrays from different libraries were mixed"):
        K.conv2d_forward(np.ones((1, 1, 4, 4)), strict.ones((1, 1, 2, 2)))


def _random_configs(count, seed=2024):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        kh, kw = int(rng.integers(1, 5)), int(rng.integers(1, 5))
        stride = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
        padding = [0, 1, 2, "same", "valid", (int(rng.integers(0, 3)), int(rng.integers(0, 3)))][
            int(rng.integers(0, 6))]
        h, w = int(rng.integers(kh, kh + 8)), int(rng.integers(kw, kw + 8))
        yield (int(rng.integers(1, 4)), int(rng.integers(1, 4)), h, w), (kh, kw), stride, padding


@pytest.mark.parametrize("case", list(_random_configs(8)), ids=case_id)
def test_random_shapes_conv_and_pool_match_loops(core_backend, case):
    shape, k, s, p = case
    rng = np.random.default_rng(sum(map(ord, str(case))))  # stable across runs
    x = rng.normal(size=shape)
    w = rng.normal(size=(2, shape[1]) + k)
    be = core_backend
    y, cache = K.conv2d_forward(be.asarray(x), be.asarray(w), None, s, p)
    assert_close(y, R.conv2d(x, w, None, s, p))
    dy = rng.normal(size=tuple(y.shape))
    dx, dw, _ = K.conv2d_backward(be.asarray(dy), be.asarray(w), cache)
    rdx, rdw, _ = R.conv2d_backward(dy, x, w, s, p)
    assert_close(dx, rdx)
    assert_close(dw, rdw)
    pads = (p, p) if isinstance(p, int) else p
    if not isinstance(p, str) and (pads[0] > k[0] // 2 or pads[1] > k[1] // 2):
        with pytest.raises(ValueError, match="more than half the kernel"):
            K.max_pool2d_forward(be.asarray(x), k, s, p)
        return
    y, cache = K.max_pool2d_forward(be.asarray(x), k, s, p)
    assert_close(y, R.max_pool2d(x, k, s, p))
    dy = rng.normal(size=tuple(y.shape))
    assert_close(K.max_pool2d_backward(be.asarray(dy), cache), R.max_pool2d_backward(dy, x, k, s, p))


def test_repeat_pixels_is_nearest_neighbour_upsampling(backend):
    from portacnn.kernels.upsample import repeat_pixels

    x = np.arange(12.0).reshape(1, 2, 2, 3)
    got = backend.to_numpy(repeat_pixels(backend.asarray(x), (2, 3)))
    assert got.shape == (1, 2, 4, 9)
    assert np.array_equal(got, np.repeat(np.repeat(x, 2, axis=2), 3, axis=3))
