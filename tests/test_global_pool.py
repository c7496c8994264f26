"""Global average pooling, (N, C, H, W) -> (N, C): against naive loops, finite differences and
PyTorch, and as a layer of a saved and loaded model."""

import numpy as np
import pytest

import portacnn
from portacnn import Conv2D, Dense, GlobalAvgPool2D, ReLU, Sequential
from portacnn import kernels as K
from portacnn import reference as R
from portacnn.gradcheck import check_layer

from helpers import assert_close


@pytest.mark.parametrize("shape", [(2, 3, 5, 4), (1, 2, 1, 1), (3, 1, 7, 2)])
def test_global_avg_pool_matches_loops(backend, host_rng, shape):
    x = host_rng.normal(size=shape)
    y, cache = K.global_avg_pool2d_forward(backend.asarray(x))
    assert tuple(y.shape) == shape[:2]
    assert_close(y, R.global_avg_pool2d(x))
    dy = host_rng.normal(size=shape[:2])
    assert_close(K.global_avg_pool2d_backward(backend.asarray(dy), cache),
                 R.global_avg_pool2d_backward(dy, x))


def test_global_avg_pool_matches_torch(core_backend, host_rng, torch):
    x = host_rng.normal(size=(2, 3, 5, 4))
    tx = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    ty = torch.flatten(torch.nn.functional.adaptive_avg_pool2d(tx, 1), 1)
    dy = host_rng.normal(size=(2, 3))
    ty.backward(torch.tensor(dy))
    layer = GlobalAvgPool2D()
    assert_close(layer.forward(core_backend.asarray(x)), ty.detach().numpy())
    assert_close(layer.backward(core_backend.asarray(dy)), tx.grad.numpy())


def test_global_avg_pool_gradient_matches_finite_differences(core_backend):
    x = core_backend.rng(0).normal((2, 3, 4, 5), dtype="float64")
    errors = check_layer(GlobalAvgPool2D(), x)
    assert errors["input"] < 1e-7


def test_global_avg_pool_model_summary_save_load(tmp_path, core_backend):
    pytest.importorskip("safetensors", reason="safetensors is a dependency")
    model = Sequential([Conv2D(4, 3, padding=1, name="conv"), ReLU(), GlobalAvgPool2D(name="gap"),
                        Dense(3, name="fc")], input_shape=(2, 6, 5), seed=0)
    text = model.summary(file=open(tmp_path / "summary.txt", "w"))
    assert "gap (GlobalAvgPool2D)" in text and "(N, 4)" in text
    x = np.random.default_rng(0).normal(size=(3, 2, 6, 5)).astype(np.float32)
    model.save(tmp_path / "gap.safetensors")
    loaded = portacnn.load(tmp_path / "gap.safetensors", device=core_backend)
    assert type(loaded.layers[2]) is GlobalAvgPool2D and loaded.layers[2].name == "gap"
    got = core_backend.to_numpy(loaded.predict(core_backend.asarray(x)))
    assert_close(got, model.predict(x), dtype="float32")


def test_global_avg_pool_refuses_non_image_input():
    with pytest.raises(ValueError, match=r"GlobalAvgPool2D expects \(C, H, W\) inputs"):
        GlobalAvgPool2D().build((5,))
    with pytest.raises(ValueError, match=r"GlobalAvgPool2D must be 4-D \(N, C, H, W\)"):
        GlobalAvgPool2D().forward(np.ones((2, 3), dtype=np.float32))
