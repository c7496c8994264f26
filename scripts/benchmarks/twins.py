"""The networks the network benchmark times, in portacnn and their twins in ``torch.nn``.

A portacnn :class:`~portacnn.model.Sequential` is translated layer by layer
(:func:`torch_twin`: same shapes, same initial weights); ResNet-20, a graph, has a hand-written
twin (:func:`torch_resnet20`). The small VGG is ``portacnn.models.small_vgg`` where that
exists, else built here (:func:`small_vgg`) as agreed for it: four 3x3 convolutions of
32-32-64-64 channels, ReLU, two max poolings, one dense layer, for 32x32 colour images.
"""

from __future__ import annotations

import numpy as np

import portacnn
from portacnn import Conv2D, Dense, Flatten, MaxPool2D, ReLU, Sequential
from portacnn.models import lenet5


def small_vgg(device=None, dtype="float32", seed=0, width=32, num_classes=10):
    """The small VGG agreed for ``portacnn.models.small_vgg`` on (3, 32, 32): two blocks of two
    3x3 "same" convolutions (``width``, then twice as many channels; ReLU, He init), each
    followed by 2x2 max pooling, then one dense layer."""
    def conv(filters):
        return [Conv2D(filters, 3, padding="same", init="he"), ReLU()]

    layers = [*conv(width), *conv(width), MaxPool2D(2), *conv(2 * width), *conv(2 * width),
              MaxPool2D(2), Flatten(), Dense(num_classes)]
    return Sequential(layers, input_shape=(3, 32, 32), device=device, dtype=dtype, seed=seed)


def networks():
    """``{name: (build(device, dtype), input_shape, note)}``: ``build`` is None where the
    network is not in this portacnn yet, and the note says why."""
    models = portacnn.models
    out = {"lenet5": (lambda device, dtype: lenet5(device=device, dtype=dtype, seed=0),
                      (1, 28, 28), "portacnn.models.lenet5")}
    if hasattr(models, "small_vgg"):
        out["small_vgg"] = (lambda device, dtype: models.small_vgg(device=device, dtype=dtype,
                                                                   seed=0),
                            (3, 32, 32), "portacnn.models.small_vgg")
    else:
        out["small_vgg"] = (lambda device, dtype: small_vgg(device=device, dtype=dtype),
                            (3, 32, 32), "built in scripts/benchmarks/twins.py (portacnn.models "
                            "has no small_vgg yet)")
    if hasattr(models, "resnet20"):
        out["resnet20"] = (lambda device, dtype: models.resnet20(device=device, dtype=dtype,
                                                                 seed=0),
                           (3, 32, 32), "portacnn.models.resnet20")
    else:
        out["resnet20"] = (None, (3, 32, 32), "skipped: portacnn.models has no resnet20 yet")
    return out


def torch_twin(name, model, torch):
    """``model``'s twin in torch.nn: ResNet-20 is :func:`torch_resnet20` with the weights
    copied where every shape lines up in order; a Sequential is translated layer by layer with
    the same initial weights. Returns ``(net, same_weights)``."""
    nn = torch.nn
    if name == "resnet20":
        net = torch_resnet20(torch)
        return net, _copy_in_order(model, net, torch)
    layers = model.layers
    modules = [_torch_layer(layer, nn) for layer in layers]
    net = nn.Sequential(*modules)
    with torch.no_grad():
        for layer, module in zip(layers, modules):
            for key, value in layer.params.items():
                getattr(module, key).copy_(torch.from_numpy(model.backend.to_numpy(value)))
    return net, True


def _torch_layer(layer, nn):
    kind = type(layer).__name__
    if kind == "Conv2D":
        if layer.padding_mode != "zeros":
            raise NotImplementedError(f"padding mode {layer.padding_mode}")
        pad = layer.padding if isinstance(layer.padding, str) else tuple(layer.padding)
        return nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size,
                         layer.stride, pad, bias=layer.use_bias,
                         groups=getattr(layer, "groups", 1))
    if kind == "Dense":
        return nn.Linear(layer.in_features, layer.out_features, bias=layer.use_bias)
    if kind in ("MaxPool2D", "AvgPool2D"):
        cls = nn.MaxPool2d if kind == "MaxPool2D" else nn.AvgPool2d
        return cls(layer.kernel_size, layer.stride, tuple(layer.padding))
    if kind in ("BatchNorm2D", "BatchNorm1D"):
        cls = nn.BatchNorm2d if kind == "BatchNorm2D" else nn.BatchNorm1d
        return cls(layer.num_features, eps=layer.eps, momentum=layer.momentum)
    simple = {"ReLU": nn.ReLU, "Tanh": nn.Tanh, "Sigmoid": nn.Sigmoid, "Flatten": nn.Flatten}
    if kind in simple:
        return simple[kind]()
    if kind == "Dropout":
        return nn.Dropout(layer.p)
    if kind == "GlobalAvgPool2D":
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    raise NotImplementedError(f"no torch twin for a {kind} layer: add it to "
                              "scripts/benchmarks/twins.py")


def torch_resnet20(torch, num_classes=10):
    """ResNet-20 for 32x32 images (He et al., 2016, section 4.2): a 3x3 convolution of 16
    channels, three stages of three basic blocks (16, 32, 64 channels; stride 2 entering the
    second and third), global average pooling and one dense layer; batch norm after every
    convolution; 1x1 projection shortcuts where the shape changes."""
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
            self.short = (nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)))

        def forward(self, x):
            return torch.relu(self.body(x) + self.short(x))

    blocks, cin = [], 16
    for cout, stride in ((16, 1), (32, 2), (64, 2)):
        for k in range(3):
            blocks.append(Block(cin, cout, stride if k == 0 else 1))
            cin = cout
    return nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                         *blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(64, num_classes))


def _copy_in_order(model, net, torch):
    """Copy ``model``'s parameters into ``net``'s where both lists have the same shapes in the
    same order; True if they did."""
    ours = [np.asarray(model.backend.to_numpy(p.value if hasattr(p, "value") else p))
            for p in model.parameters()]
    theirs = list(net.parameters())
    if [a.shape for a in ours] != [tuple(t.shape) for t in theirs]:
        return False
    with torch.no_grad():
        for a, t in zip(ours, theirs):
            t.copy_(torch.from_numpy(a))
    return True
