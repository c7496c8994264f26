"""portacnn.models.resnet20: PyTorch's parameters and forward pass for the same architecture,
and a checkpoint saved on NumPy that predicts the same on PyTorch."""

import numpy as np
import pytest

import portacnn
from portacnn.models import MODELS, resnet20
from portacnn.optim import SGD

from helpers import assert_close


def _torch_resnet20(torch, channels=3, classes=10):
    """He et al.'s CIFAR ResNet-20 in PyTorch, projection shortcuts (option B), modules in the
    order portacnn makes its layers."""
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.proj = None
            if stride != 1 or cin != cout:
                self.proj = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

        def forward(self, x):
            h = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
            return torch.relu(h + (x if self.proj is None else self.proj(x)))

    layers, cin = [nn.Conv2d(channels, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()], 16
    for width in (16, 32, 64):
        for block in range(3):
            layers.append(Block(cin, width, 2 if block == 0 and width != 16 else 1))
            cin = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, classes))


def test_resnet20_has_pytorchs_parameters_and_forward_pass(torch):
    model = resnet20()
    net = _torch_resnet20(torch)
    assert [p.shape for p in model.parameters()] == [tuple(p.shape) for p in net.parameters()]
    assert model.num_params() == sum(p.numel() for p in net.parameters()) == 272_474
    assert isinstance(model, portacnn.Model) and MODELS["resnet20"] is resnet20
    small = resnet20((2, 8, 8), num_classes=5, dtype="float64", seed=1)
    net = _torch_resnet20(torch, 2, 5).double()
    with torch.no_grad():
        for p, q in zip(small.parameters(), net.parameters()):
            q.copy_(torch.tensor(small.backend.to_numpy(p.value)))
    x = np.random.default_rng(0).normal(size=(3, 2, 8, 8))
    logits = small.forward(small.backend.asarray(x))           # training mode: batch statistics
    assert logits.shape == (3, 5)
    assert_close(logits, net(torch.tensor(x)).detach().numpy())


def test_resnet20_saved_on_numpy_predicts_the_same_on_torch(tmp_path, torch):
    model = resnet20((3, 8, 8), num_classes=4, dtype="float64", seed=2)
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(4, 3, 8, 8)), np.array([0, 1, 2, 3])
    model.fit(x, y, epochs=1, batch_size=4, optimizer=SGD(0.1, momentum=0.9), verbose=0)
    loaded = portacnn.load(model.save(tmp_path / "r.safetensors"), device="torch")
    assert loaded.backend.name == "torch"
    assert_close(loaded.predict(x), model.predict(x))      # eval mode: the running statistics


def test_resnet20_refuses_a_flat_input_shape():
    with pytest.raises(ValueError, match=r"resnet20 takes \(C, H, W\) images"):
        resnet20((3, 32))
