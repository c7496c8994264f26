"""Layers: finite-difference gradients, cross-backend equality, and errors users will meet."""

import io

import numpy as np
import pytest

from portacnn import (AvgPool2D, Conv2D, Dense, Dropout, Flatten, MaxPool2D, ReLU, Sequential,
                      Sigmoid, Tanh, get_backend)
from portacnn import kernels as K
from portacnn.gradcheck import check_layer, numerical_gradient, relative_error

from helpers import assert_close


def _layers(backend):
    f64 = dict(dtype="float64", device=backend, seed=3)
    return [
        Conv2D(3, 3, in_channels=2, **f64),
        Conv2D(2, (2, 3), stride=2, padding="same", in_channels=2, **f64),
        Conv2D(2, 3, stride=(1, 2), padding=2, in_channels=2, init="he", **f64),
        Conv2D(4, 3, stride=2, padding="same", in_channels=2, groups=2, **f64),   # depthwise x2
        MaxPool2D(2),
        MaxPool2D(3, stride=2, padding=1),
        AvgPool2D(2),
        AvgPool2D((3, 2), stride=1, padding="same"),
        ReLU(), Tanh(), Sigmoid(), Flatten(),
    ]


def test_gradients_of_every_layer_match_finite_differences(core_backend):
    # Distinct values avoid max-pool ties and ReLU kinks, where finite differences are undefined.
    x = core_backend.asarray(np.random.default_rng(0).permutation(2 * 2 * 6 * 7).reshape(2, 2, 6, 7)
                             / 40.0 - 2.0125, dtype="float64")  # never exactly 0
    for layer in _layers(core_backend):
        errors = check_layer(layer, x)
        assert errors and max(errors.values()) < 1e-7, (layer, errors)


def test_dense_and_dropout_gradients(core_backend):
    x = core_backend.rng(4).normal((3, 6), dtype="float64")
    dense = Dense(4, in_features=6, dtype="float64", device=core_backend, seed=1)
    errors = check_layer(dense, x)
    assert set(errors) == {"input", "weight", "bias"} and max(errors.values()) < 1e-7
    drop = Dropout(0.4, seed=5)
    drop.build((6,), core_backend)
    y = drop.forward(x)
    dx = drop.backward(core_backend.asarray(np.ones((3, 6))))
    kept = core_backend.to_numpy(y) != 0
    # d(sum y)/dx = mask / (1 - p): zero where dropped, 1/0.6 where kept
    assert_close(dx, np.where(kept, 1 / 0.6, 0.0))
    assert 0 < kept.mean() < 1


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_loss_gradients_match_finite_differences(core_backend, loss):
    be = core_backend
    logits = be.rng(2).normal((4, 5), dtype="float64")
    if loss == "cross_entropy":
        target = be.asarray(np.array([1, 0, 4, 2]))
        fn = K.softmax_cross_entropy
    else:
        target = be.rng(3).normal((4, 5), dtype="float64")
        fn = K.mse
    _, analytic = fn(logits, target)
    numeric = numerical_gradient(lambda z: fn(z, target)[0], logits)
    assert relative_error(analytic, numeric) < 1e-7


def test_same_seed_gives_identical_parameters_on_every_backend(backend):
    ref = Conv2D(6, 5, in_channels=1, seed=11, device="cpu")
    got = Conv2D(6, 5, in_channels=1, seed=11, device=backend)
    for key in ("weight", "bias"):
        assert np.array_equal(backend.to_numpy(got.params[key]), ref.params[key])
    other = Dense(10, in_features=20, seed=12, device=backend)
    assert not np.array_equal(backend.to_numpy(other.params["weight"])[:6, :1],
                              ref.params["weight"].reshape(6, -1)[:, :1])


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_forward_and_backward_agree_across_backends(backend, dtype):
    """A small conv net's forward and backward on `backend` agree with NumPy's."""

    def net(be):
        return [Conv2D(4, 3, padding=1, in_channels=2, dtype=dtype, device=be, seed=1), Tanh(),
                MaxPool2D(2), Conv2D(3, 3, in_channels=4, dtype=dtype, device=be, seed=2), ReLU(),
                AvgPool2D(2, stride=1), Flatten(),
                Dense(5, in_features=3 * 1 * 1, dtype=dtype, device=be, seed=3), Sigmoid()]

    x = np.random.default_rng(5).normal(size=(3, 2, 8, 8))
    dy = np.random.default_rng(6).normal(size=(3, 5))
    results = []
    for be in (get_backend("numpy"), backend):
        layers = net(be)
        h = be.asarray(x, dtype=dtype)
        for layer in layers:
            h = layer.forward(h)
        g = be.asarray(dy, dtype=dtype)
        for layer in reversed(layers):
            g = layer.backward(g)
        results.append([be.to_numpy(h), be.to_numpy(g)]
                       + [be.to_numpy(v) for lay in layers for v in lay.grads.values()])
    for ours, theirs in zip(*results):
        assert ours.dtype == np.dtype(dtype)
        assert_close(theirs, ours, dtype=dtype)
    assert len(results[0]) == 2 + 6


def test_layers_build_lazily_from_the_first_input(core_backend):
    conv = Conv2D(5, 3, padding="same")
    assert not conv.built
    y = conv.forward(core_backend.asarray(np.ones((2, 3, 6, 6)), dtype="float32"))
    assert conv.built and conv.backend == core_backend
    assert tuple(conv.params["weight"].shape) == (5, 3, 3, 3)
    assert tuple(y.shape) == (2, 5, 6, 6)


def test_first_layer_skips_input_gradient():
    conv = Conv2D(2, 3, in_channels=1, seed=0)
    conv.need_input_grad = False
    y = conv.forward(np.ones((1, 1, 5, 5), dtype=np.float32))
    assert conv.backward(np.ones(y.shape, dtype=np.float32)) is None
    assert conv.grads["weight"].shape == (2, 1, 3, 3)


def test_eval_mode_dropout_is_identity_and_keeps_no_cache():
    drop = Dropout(0.5, seed=0)
    x = np.ones((4, 10), dtype=np.float32)
    drop.eval()
    assert np.array_equal(drop.forward(x), x)
    conv = Conv2D(2, 3, in_channels=1, seed=0).eval()
    conv.forward(np.ones((1, 1, 5, 5), dtype=np.float32))
    with pytest.raises(RuntimeError, match="backward called before forward in training mode"):
        conv.backward(np.ones((1, 2, 3, 3), dtype=np.float32))


def test_dropout_masks_identical_across_backends(core_backend):
    x = np.ones((4, 50))
    outs = []
    for be in (get_backend("numpy"), core_backend):
        drop = Dropout(0.3, seed=9)
        drop.build((50,), be)
        outs.append(be.to_numpy(drop.forward(be.asarray(x, dtype="float32"))))
    assert np.array_equal(*outs)


def test_a_grouped_convolution_layer_counts_saves_and_describes_its_groups(tmp_path):
    import portacnn

    model = Sequential([Conv2D(8, 3, padding=1, groups=4), ReLU(),
                        Conv2D(8, 3, groups=8), Flatten(), Dense(2)],
                       input_shape=(4, 6, 6), seed=0)
    conv, depthwise = model.layers[0], model.layers[2]
    assert tuple(conv.params["weight"].shape) == (8, 1, 3, 3)
    assert tuple(depthwise.params["weight"].shape) == (8, 1, 3, 3)
    assert conv.num_params() == 8 * 1 * 9 + 8
    assert "8@3x3, stride 1, pad 1, groups 4" in model.summary(file=io.StringIO())
    assert conv.get_config()["groups"] == 4
    x = np.random.default_rng(0).normal(size=(3, 4, 6, 6)).astype(np.float32)
    model.save(tmp_path / "m.safetensors")
    loaded = portacnn.load(tmp_path / "m.safetensors")
    assert loaded.layers[0].groups == 4 and loaded.layers[2].groups == 8
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))


def test_groups_that_do_not_divide_the_channels_are_refused():
    with pytest.raises(ValueError, match=r"groups=3 does not divide the 8 output channel"):
        Conv2D(8, 3, groups=3)
    with pytest.raises(ValueError, match=r"groups=2 does not divide the 3 input channel"):
        Conv2D(4, 3, in_channels=3, groups=2)
    with pytest.raises(ValueError, match=r"groups must be a positive int, got 0"):
        Conv2D(4, 3, groups=0)
    with pytest.raises(ValueError, match=r"groups=2 does not divide the 3 input channel"):
        Sequential([Conv2D(4, 3, groups=2)], input_shape=(3, 8, 8))
    with pytest.raises(ValueError, match=r"weight expects 2 per group, 4 in all with groups=2"):
        K.conv2d_forward(np.ones((1, 2, 5, 5)), np.ones((4, 2, 3, 3)), groups=2)


# --- bad input ------------------------------------------------------------------------------

def test_layer_errors_name_the_problem_and_the_fix():
    conv = Conv2D(4, 3, in_channels=3, seed=0)
    with pytest.raises(ValueError, match=r"must be 4-D \(N, C, H, W\).*add a batch axis"):
        conv.forward(np.ones((3, 8, 8), dtype=np.float32))
    with pytest.raises(ValueError, match=r"expects 3 input channel\(s\) but the input has 1"):
        conv.forward(np.ones((2, 1, 8, 8), dtype=np.float32))
    with pytest.raises(ValueError, match=r"kernel 3x3 is larger than the padded input 2x2"):
        conv.forward(np.ones((2, 3, 2, 2), dtype=np.float32))
    with pytest.raises(TypeError, match=r"holds float32 parameters but the input is float64"):
        conv.forward(np.ones((2, 3, 8, 8)))
    with pytest.raises(ValueError, match="stride must be a positive"):
        Conv2D(4, 3, stride=0)
    with pytest.raises(ValueError, match="kernel_size must be positive"):
        MaxPool2D(0)
    with pytest.raises(ValueError, match="out_channels must be a positive int"):
        Conv2D(-1, 3)
    with pytest.raises(ValueError, match=r"dropout probability p must be in \[0, 1\)"):
        Dropout(1.5)
    with pytest.raises(ValueError, match="dtype must be 'float32' or 'float64'"):
        Dense(3, dtype="float16")
    dense = Dense(3, in_features=4, seed=0)
    with pytest.raises(ValueError, match="put a Flatten layer before it"):
        dense.forward(np.ones((2, 1, 2, 2), dtype=np.float32))
    with pytest.raises(ValueError, match="built for inputs of shape"):
        dense.forward(np.ones((2, 5), dtype=np.float32))


def test_layer_fed_another_namespace_says_how_to_move_it():
    import array_api_strict as strict

    conv = Conv2D(2, 3, in_channels=1, seed=0, device="array_api_strict")
    with pytest.raises(TypeError, match=r"input to Conv2D is a numpy array on cpu but the model is "
                                        r"on array_api_strict.*backend.asarray"):
        conv.forward(np.ones((1, 1, 5, 5), dtype=np.float32))
    relu = ReLU()
    relu.forward(strict.ones((1, 3)))
    with pytest.raises(TypeError, match="move it with model.backend.asarray"):
        relu.forward(np.ones((1, 3)))


def test_to_moves_parameters_between_backends():
    conv = Conv2D(2, 3, in_channels=1, seed=0)
    w = conv.params["weight"].copy()
    conv.to("array_api_strict")
    assert conv.backend.name == "array_api_strict"
    assert np.array_equal(np.from_dlpack(conv.params["weight"]), w)


def test_an_eval_mode_convolution_on_numpy_returns_the_batch_innermost_view():
    # The CPU override's inference route leaves the output in (F, OH, OW, N) memory for the
    # activation and pooling after it; training outputs stay row-major.
    conv = Conv2D(4, 3, padding=1, in_channels=2, seed=0)
    x = np.random.default_rng(0).normal(size=(5, 2, 6, 6)).astype(np.float32)
    y_train = conv.forward(x)
    conv.eval()
    y_eval = conv.forward(x)
    assert y_train.flags.c_contiguous and not y_eval.flags.c_contiguous
    assert y_eval.strides[0] == y_eval.itemsize
    np.testing.assert_allclose(y_eval, y_train, rtol=1e-5, atol=1e-6)


def test_eval_mode_equals_training_mode_through_every_convolution_route():
    # On numpy the routes leave eval-mode outputs in other memory orders (the folded route's a
    # view of (F, N, OH, OW) memory); the pooling, activation and dense layers after them must
    # give what the training-mode (row-major) outputs give.
    model = Sequential([Conv2D(8, 3, padding="same"), ReLU(), MaxPool2D(2),      # folded
                        Conv2D(8, 3, padding="same", groups=8), ReLU(), AvgPool2D(2),
                        Conv2D(4, 3), Tanh(),                                   # batch-minor
                        Conv2D(4, 1), Flatten(), Dense(3)],                     # pointwise
                       input_shape=(3, 40, 40), seed=0)
    x = np.random.default_rng(0).normal(size=(5, 3, 40, 40)).astype(np.float32)
    y_train = model.forward(x)
    model.eval()
    first = model.layers[0].forward(x)
    assert first.strides[1] == 5 * first.strides[0]           # (F, N, OH, OW) memory
    np.testing.assert_allclose(model.forward(x), y_train, rtol=1e-5, atol=1e-6)
