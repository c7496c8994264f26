"""Min pooling, upsampling, batch normalisation and replicate padding (issue: the tutorials'
remaining building blocks), against naive loops, finite differences and PyTorch."""

import numpy as np
import pytest

import portacnn
from portacnn import (BatchNorm1D, BatchNorm2D, Conv2D, MaxPool2D, MinPool2D, Upsample2D,
                      get_backend)
from portacnn import kernels as K
from portacnn import reference as R
from portacnn.gradcheck import check_layer

from helpers import assert_close

POOL_CASES = [((2, 3, 8, 8), 2, None, 0), ((1, 2, 7, 9), 3, 2, 1), ((2, 2, 9, 7), 2, None, 0),
              ((1, 2, 6, 6), 3, 3, "same")]


@pytest.mark.parametrize("case", POOL_CASES, ids=str)
def test_min_pool_matches_loops(backend, host_rng, case):
    shape, k, s, p = case
    x = host_rng.normal(size=shape)
    y, cache = K.min_pool2d_forward(backend.asarray(x), k, s, p)
    assert_close(y, R.min_pool2d(x, k, s, p))
    dy = host_rng.normal(size=tuple(y.shape))
    assert_close(K.min_pool2d_backward(backend.asarray(dy), cache),
                 R.min_pool2d_backward(dy, x, k, s, p))


def test_min_pool_gradient_goes_to_first_minimum(backend):
    x = np.ones((1, 1, 2, 4))
    x[0, 0, 1, 3] = 0.0                         # right window: unique minimum; left: all tied
    y, cache = K.min_pool2d_forward(backend.asarray(x), 2)
    dx = backend.to_numpy(K.min_pool2d_backward(backend.asarray(np.ones((1, 1, 1, 2))), cache))
    assert np.array_equal(dx[0, 0], [[1, 0, 0, 0], [0, 0, 0, 1]])


@pytest.mark.parametrize("scale", [2, (2, 3), (1, 2)])
def test_upsample_matches_loops(backend, host_rng, scale):
    x = host_rng.normal(size=(2, 3, 4, 5))
    y = K.upsample_nearest_forward(backend.asarray(x), scale)
    assert_close(y, R.upsample_nearest(x, scale))
    dy = host_rng.normal(size=tuple(y.shape))
    assert_close(K.upsample_nearest_backward(backend.asarray(dy), scale),
                 R.upsample_nearest_backward(dy, scale))


@pytest.mark.parametrize("shape", [(4, 3, 5, 6), (7, 5)])
def test_batchnorm_train_forward_matches_loops_and_running_stats(backend, host_rng, shape):
    x = host_rng.normal(size=shape) * 3 + 1
    c = shape[1]
    gamma, beta = host_rng.normal(size=c), host_rng.normal(size=c)
    be = backend
    y, _, mean, var = K.batchnorm_forward(
        be.asarray(x), be.asarray(gamma), be.asarray(beta), be.asarray(np.zeros(c)),
        be.asarray(np.ones(c)), training=True, momentum=0.1)
    y_ref, m_ref, v_ref = R.batchnorm_train(x, gamma, beta)
    assert_close(y, y_ref)
    count = x.size // c
    assert_close(mean, 0.1 * m_ref)
    assert_close(var, 0.9 + 0.1 * v_ref * count / (count - 1))   # unbiased, as PyTorch


def test_batchnorm_eval_uses_running_statistics():
    bn = BatchNorm1D(3, dtype="float64")
    x = np.random.default_rng(0).normal(size=(8, 3)) * 2 + 5
    for _ in range(30):
        bn.forward(x)                           # running stats converge to the batch stats
    bn.eval()
    y = bn.forward(x)
    assert np.allclose(y.mean(axis=0), 0, atol=0.2)   # normalised with the running stats
    bn.buffers["running_mean"][:] = 0
    bn.buffers["running_var"][:] = 1
    assert np.allclose(bn.forward(x), x / np.sqrt(1 + 1e-5))


def test_new_layer_gradients_match_finite_differences(core_backend):
    be = core_backend
    x4 = be.asarray(np.random.default_rng(1).permutation(2 * 3 * 6 * 6).reshape(2, 3, 6, 6) / 20.0
                    - 5.0125, dtype="float64")
    x2 = be.rng(2).normal((5, 4), dtype="float64")
    layers = [(BatchNorm2D(3, dtype="float64", device=be), x4),
              (BatchNorm1D(4, dtype="float64", device=be), x2),
              (MinPool2D(2), x4), (MinPool2D(3, stride=2, padding=1), x4),
              (Upsample2D((2, 3)), x4),
              (Conv2D(2, 3, padding=2, padding_mode="replicate", in_channels=3,
                      dtype="float64", device=be, seed=0), x4),
              (MaxPool2D(3, stride=2, padding=1, padding_mode="replicate"), x4)]
    for layer, x in layers:
        errors = check_layer(layer, x)
        assert max(errors.values()) < 1e-7, (layer, errors)


@pytest.mark.parametrize("shape", [(3, 2, 4, 4), (5, 2)])
def test_batchnorm_eval_mode_gradient_matches_finite_differences(core_backend, shape):
    from portacnn.gradcheck import numerical_gradient, relative_error

    be = core_backend
    x = be.rng(0).normal(shape, dtype="float64")
    gamma, beta = be.asarray([1.5, -0.5], dtype="float64"), be.asarray([0.2, 0.1], dtype="float64")
    mean, var = be.asarray([0.3, -1.0], dtype="float64"), be.asarray([2.0, 0.5], dtype="float64")
    r = be.rng(1).normal(shape, dtype="float64")

    def loss(xv):
        return be.xp.sum(K.batchnorm_forward(xv, gamma, beta, mean, var, training=False)[0] * r)

    _, cache, _, _ = K.batchnorm_forward(x, gamma, beta, mean, var, training=False)
    dx, _, _ = K.batchnorm_backward(r, cache)
    assert relative_error(dx, numerical_gradient(loss, x)) < 1e-7


REPLICATE_CASES = [((2, 2, 6, 7), 3, 1, 1), ((1, 3, 5, 5), (3, 2), 2, "same"),
                   ((2, 1, 7, 6), 3, (1, 2), (2, 1))]


@pytest.mark.parametrize("case", REPLICATE_CASES, ids=str)
def test_replicate_padding_conv_matches_loops(backend, host_rng, case):
    shape, k, s, p = case
    kh, kw = (k, k) if isinstance(k, int) else k
    x = host_rng.normal(size=shape)
    w = host_rng.normal(size=(3, shape[1], kh, kw))
    y, cache = K.conv2d_forward(backend.asarray(x), backend.asarray(w), None, s, p,
                                padding_mode="replicate")
    assert_close(y, R.conv2d(x, w, None, s, p, "replicate"))
    dy = host_rng.normal(size=tuple(y.shape))
    dx, dw, _ = K.conv2d_backward(backend.asarray(dy), backend.asarray(w), cache)
    rdx, rdw, _ = R.conv2d_backward(dy, x, w, s, p, "replicate")
    assert_close(dx, rdx)
    assert_close(dw, rdw)


@pytest.mark.parametrize("kind", ["max", "min", "avg"])
def test_replicate_padding_pools_match_loops(backend, host_rng, kind):
    x = host_rng.normal(size=(2, 2, 7, 6))
    fwd = getattr(K, f"{kind}_pool2d_forward")
    bwd = getattr(K, f"{kind}_pool2d_backward")
    y, cache = fwd(backend.asarray(x), 3, 2, 1, "replicate")
    assert_close(y, getattr(R, f"{kind}_pool2d")(x, 3, 2, 1, "replicate"))
    dy = host_rng.normal(size=tuple(y.shape))
    assert_close(bwd(backend.asarray(dy), cache),
                 getattr(R, f"{kind}_pool2d_backward")(dy, x, 3, 2, 1, "replicate"))


def test_replicate_col2im_is_adjoint_of_im2col(backend, host_rng):
    x = host_rng.normal(size=(2, 2, 5, 6))
    geo = K.geometry((5, 6), 3, 2, 2, padding_mode="replicate")
    cols = K.im2col(backend.asarray(x), geo)
    g = host_rng.normal(size=tuple(cols.shape))
    lhs = float(np.sum(backend.to_numpy(cols) * g))
    back = K.col2im(backend.asarray(g), geo, x.shape)
    rhs = float(np.sum(x * backend.to_numpy(back)))
    assert abs(lhs - rhs) <= 1e-10 * max(abs(lhs), 1.0)


def test_new_layers_error_messages():
    with pytest.raises(ValueError, match="padding_mode must be 'zeros' or 'replicate', got 'reflect'"):
        Conv2D(2, 3, padding_mode="reflect")
    with pytest.raises(ValueError, match="padding_mode must be 'zeros' or 'replicate'"):
        MaxPool2D(2, padding_mode="circular")
    with pytest.raises(ValueError, match="scale must be a positive int or pair"):
        Upsample2D(0)
    bn = BatchNorm2D(3)
    with pytest.raises(ValueError, match=r"built for 3 channels/features, got 2"):
        bn.forward(np.ones((2, 2, 4, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="expects 4-D input"):
        bn.forward(np.ones((2, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="needs more than one value per channel"):
        BatchNorm1D(3).forward(np.ones((1, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="momentum must be in"):
        BatchNorm1D(3, momentum=2.0)
    with pytest.raises(ValueError, match="not a multiple of the scale"):
        K.upsample_nearest_backward(np.ones((1, 1, 5, 4)), 2)


# --- models, checkpoints, devices -----------------------------------------------------------

def test_batchnorm_lenet_summary_save_load_and_devices(tmp_path, core_backend):
    from portacnn.data import load_sample, normalize
    from portacnn.models import lenet5
    from portacnn.optim import Adam

    (x, y), (xt, yt) = load_sample()
    model = lenet5("relu", "max", batchnorm=True, seed=0)
    text = model.summary(file=open(tmp_path / "summary.txt", "w"))
    assert "bn1 (BatchNorm2D)" in text and "Buffers (running statistics, not trained): 452" in text
    model.fit(normalize(x[:512]), y[:512], epochs=2, batch_size=64, optimizer=Adam(3e-3),
              verbose=0)
    rm = model.layers[1].buffers["running_mean"].copy()
    assert np.any(rm != 0) and np.any(model.layers[1].buffers["running_var"] != 1)
    model.save(tmp_path / "bn.safetensors")
    loaded = portacnn.load(tmp_path / "bn.safetensors", device=core_backend)
    assert np.allclose(core_backend.to_numpy(loaded.layers[1].buffers["running_mean"]), rm)
    probs = core_backend.to_numpy(loaded.predict(core_backend.asarray(normalize(xt[:50]))))
    assert_close(probs, model.predict(normalize(xt[:50])), dtype="float32")
    loaded.to("cpu")
    assert isinstance(loaded.layers[1].buffers["running_var"], np.ndarray)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_batchnorm_training_agrees_across_backends(backend, dtype):
    from portacnn.models import lenet5
    from portacnn.optim import SGD

    x = np.random.default_rng(0).normal(size=(16, 1, 28, 28))
    y = np.arange(16) % 10
    results = []
    for be in (get_backend("numpy"), backend):
        model = lenet5("relu", "max", batchnorm=True, device=be, dtype=dtype, seed=3)
        opt = SGD(0.05, momentum=0.9)
        losses = [float(model.train_step(be.asarray(x, dtype=dtype), be.asarray(y), opt)[0])
                  for _ in range(3)]
        results.append((losses, be.to_numpy(model.layers[1].buffers["running_var"])))
    assert_close(results[1][0], results[0][0], dtype=dtype)
    assert_close(results[1][1], results[0][1], dtype=dtype)


# --- PyTorch as the oracle ------------------------------------------------------------------

# Each test asks for the ``torch`` fixture (tests/conftest.py): only these skip without it.


def _t(torch, a):
    return torch.tensor(a, dtype=torch.float64, requires_grad=True)


def test_min_pool_matches_torch_max_pool_of_negated(core_backend, host_rng, torch):
    F = torch.nn.functional
    x = host_rng.normal(size=(2, 3, 9, 8))
    x[0, 0, :4, :4] = 1.0                        # ties
    tx = _t(torch, x)
    ty = -F.max_pool2d(-tx, 3, stride=2, padding=1)
    dy = host_rng.normal(size=tuple(ty.shape))
    ty.backward(torch.tensor(dy))
    y, cache = K.min_pool2d_forward(core_backend.asarray(x), 3, 2, 1)
    assert_close(y, ty.detach().numpy())
    assert_close(K.min_pool2d_backward(core_backend.asarray(dy), cache), tx.grad.numpy())


def test_upsample_matches_torch(core_backend, host_rng, torch):
    x = host_rng.normal(size=(2, 3, 4, 5))
    tx = _t(torch, x)
    ty = torch.nn.Upsample(scale_factor=(2, 3), mode="nearest")(tx)
    dy = host_rng.normal(size=tuple(ty.shape))
    ty.backward(torch.tensor(dy))
    layer = Upsample2D((2, 3))
    assert_close(layer.forward(core_backend.asarray(x)), ty.detach().numpy())
    assert_close(layer.backward(core_backend.asarray(dy)), tx.grad.numpy())


@pytest.mark.parametrize("dims", [2, 1])
def test_batchnorm_matches_torch_train_and_eval_with_running_stats(core_backend, host_rng, dims,
                                                                   torch):
    shape = (6, 3, 5, 4) if dims == 2 else (9, 3)
    tbn = (torch.nn.BatchNorm2d if dims == 2 else torch.nn.BatchNorm1d)(3, momentum=0.1).double()
    with torch.no_grad():
        tbn.weight.copy_(torch.tensor(host_rng.normal(size=3)))
        tbn.bias.copy_(torch.tensor(host_rng.normal(size=3)))
    ours = (BatchNorm2D if dims == 2 else BatchNorm1D)(3, dtype="float64", device=core_backend)
    ours.params["weight"] = core_backend.asarray(tbn.weight.detach().numpy())
    ours.params["bias"] = core_backend.asarray(tbn.bias.detach().numpy())
    for step in range(4):                        # running statistics after several steps
        x = host_rng.normal(size=shape) * (step + 1) + step
        tx = _t(torch, x)
        ty = tbn(tx)
        dy = host_rng.normal(size=shape)
        ty.backward(torch.tensor(dy))
        y = ours.forward(core_backend.asarray(x))
        dx = ours.backward(core_backend.asarray(dy))
        assert_close(y, ty.detach().numpy())
        assert_close(dx, tx.grad.numpy())
        assert_close(ours.grads["weight"], tbn.weight.grad.numpy())
        assert_close(ours.grads["bias"], tbn.bias.grad.numpy())
        tbn.weight.grad = tbn.bias.grad = None
    assert_close(ours.buffers["running_mean"], tbn.running_mean.numpy())
    assert_close(ours.buffers["running_var"], tbn.running_var.numpy())
    tbn.eval()
    ours.eval()
    x = host_rng.normal(size=shape)
    assert_close(ours.forward(core_backend.asarray(x)), tbn(torch.tensor(x)).detach().numpy())


def test_replicate_padding_matches_torch_pad(core_backend, host_rng, torch):
    F = torch.nn.functional
    x = host_rng.normal(size=(2, 2, 6, 7))
    w = host_rng.normal(size=(3, 2, 3, 3))
    tx, tw = _t(torch, x), _t(torch, w)
    ty = F.conv2d(F.pad(tx, (2, 2, 1, 1), mode="replicate"), tw, stride=(1, 2))
    dy = host_rng.normal(size=tuple(ty.shape))
    ty.backward(torch.tensor(dy))
    y, cache = K.conv2d_forward(core_backend.asarray(x), core_backend.asarray(w), None, (1, 2),
                                (1, 2), padding_mode="replicate")
    assert_close(y, ty.detach().numpy())
    dx, dw, _ = K.conv2d_backward(core_backend.asarray(dy), core_backend.asarray(w), cache)
    assert_close(dx, tx.grad.numpy())
    assert_close(dw, tw.grad.numpy())
    tx2 = _t(torch, x)
    tp = F.avg_pool2d(F.pad(tx2, (1, 1, 1, 1), mode="replicate"), 3, stride=2)
    tp.backward(torch.ones_like(tp))
    yp, pc = K.avg_pool2d_forward(core_backend.asarray(x), 3, 2, 1, "replicate")
    assert_close(yp, tp.detach().numpy())
    assert_close(K.avg_pool2d_backward(core_backend.asarray(np.ones(tuple(tp.shape))), pc),
                 tx2.grad.numpy())
