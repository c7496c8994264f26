"""portacnn.models.small_vgg: PyTorch's parameter count and one SGD step of PyTorch, and the
command line's --model small_vgg."""

import numpy as np
import pytest

from portacnn.cli import main
from portacnn.models import MODELS, small_vgg
from portacnn.optim import SGD

from helpers import SELECTED, assert_close, make_backend, write_mnist


def _torch_vgg(torch, channels, width, classes, features):
    nn = torch.nn
    w2 = 2 * width
    return nn.Sequential(
        nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1),
        nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(width, w2, 3, padding=1), nn.ReLU(),
        nn.Conv2d(w2, w2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(features, classes))


def test_small_vgg_has_pytorchs_parameter_count(torch):
    model = small_vgg()
    net = _torch_vgg(torch, 3, 32, 10, 64 * 8 * 8)
    ours = [p.shape for p in model.parameters()]
    theirs = [tuple(p.shape) for p in net.parameters()]
    assert ours == theirs
    assert model.num_params() == sum(p.numel() for p in net.parameters()) == 106_538


# not on JAX: eager JAX compiles each operation of the step for its shapes (20 s); the layers
# are tested on JAX in their own modules
@pytest.mark.parametrize("name", [b for b in SELECTED if b in ("numpy", "array_api_strict",
                                                               "torch", "cupy")])
def test_small_vgg_sgd_step_matches_torch(name, torch):
    """One SGD step from the same weights: PyTorch's loss and updated weights (float64)."""
    be = make_backend(name)
    model = small_vgg((2, 12, 12), num_classes=5, width=3, device=be, dtype="float64", seed=1)
    net = _torch_vgg(torch, 2, 3, 5, 6 * 3 * 3).double()
    with torch.no_grad():
        for p, q in zip(model.parameters(), net.parameters()):
            q.copy_(torch.tensor(be.to_numpy(p.value)))
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(4, 2, 12, 12)), np.array([0, 3, 4, 1])
    loss, _ = model.train_step(be.asarray(x), be.asarray(y), SGD(0.1))
    tloss = torch.nn.functional.cross_entropy(net(torch.tensor(x)), torch.tensor(y))
    tloss.backward()
    with torch.no_grad():
        for q in net.parameters():
            q -= 0.1 * q.grad
    assert abs(float(loss) - tloss.item()) < 1e-9
    for p, q in zip(model.parameters(), net.parameters()):
        assert_close(p.value, q.detach().numpy())


def test_small_vgg_refuses_tiny_images_and_bad_width():
    with pytest.raises(ValueError, match="at least 4x4"):
        small_vgg((3, 3, 8))
    with pytest.raises(ValueError, match="width must be a positive int"):
        small_vgg(width=0)


def test_cli_trains_small_vgg(tmp_path, capsys):
    assert "small_vgg" in MODELS
    write_mnist(tmp_path / "mnist", n_train=8, n_test=4)
    assert main(["train", "--model", "small_vgg", "--data", str(tmp_path / "mnist"), "--epochs",
                 "1", "--batch-size", "4", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "conv4 (Conv2D)" in out and "Total params: 96,362" in out and "epoch 1/1" in out
