"""Ready-made networks."""

from __future__ import annotations

from .layers import (Add, AvgPool2D, BatchNorm1D, BatchNorm2D, Conv2D, Dense, Flatten,
                     GlobalAvgPool2D, Input, MaxPool2D, ReLU, Tanh)
from .model import Model, Sequential

__all__ = ["lenet5", "small_vgg", "resnet20", "MODELS"]


def lenet5(activation: str = "tanh", pool: str = "avg", *, batchnorm: bool = False,
           input_shape=(1, 28, 28), num_classes: int = 10, device=None, dtype: str = "float32",
           seed: int | None = 0):
    """LeNet-5 (LeCun et al., 1998) as in the tutorials.

    conv 6@5x5 -> act -> pool 2 -> conv 16@5x5 -> act -> pool 2 -> dense 400->120->84->10.
    A 28x28 input is zero-padded by 2 in the first convolution (a 32x32 input is not), so both
    reach the 16x5x5 = 400 features of the original.

    Args:
        activation: ``"tanh"`` (classic, Glorot init) or ``"relu"`` (He init).
        pool: ``"avg"`` (classic) or ``"max"``.
        batchnorm: put batch normalisation between each convolution / hidden dense layer and
            its activation (those layers then have no bias: the norm's shift replaces it).
        input_shape: ``(1, 28, 28)`` or ``(1, 32, 32)`` (channels may differ).
        num_classes, device, dtype, seed: as for :class:`~portacnn.model.Sequential`.

    Returns:
        A built :class:`~portacnn.model.Sequential` emitting logits (N, num_classes).
    """
    if activation not in ("tanh", "relu"):
        raise ValueError(f"activation must be 'tanh' or 'relu', got {activation!r}")
    if pool not in ("avg", "max"):
        raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}")
    c, h, w = input_shape
    if (h, w) not in ((28, 28), (32, 32)):
        raise ValueError(f"LeNet-5 takes 28x28 or 32x32 images, got {h}x{w}")
    act = Tanh if activation == "tanh" else ReLU
    init = "glorot" if activation == "tanh" else "he"
    pooling = AvgPool2D if pool == "avg" else MaxPool2D
    bias = not batchnorm

    def norm(cls, name):
        return [cls(name=name)] if batchnorm else []

    layers = [
        Conv2D(6, 5, padding=2 if h == 28 else 0, init=init, bias=bias, name="conv1"),
        *norm(BatchNorm2D, "bn1"), act(), pooling(2, name="pool1"),
        Conv2D(16, 5, init=init, bias=bias, name="conv2"), *norm(BatchNorm2D, "bn2"), act(),
        pooling(2, name="pool2"),
        Flatten(),
        Dense(120, init=init, bias=bias, name="fc1"), *norm(BatchNorm1D, "bn3"), act(),
        Dense(84, init=init, bias=bias, name="fc2"), *norm(BatchNorm1D, "bn4"), act(),
        Dense(num_classes, init="glorot", name="fc3"),
    ]
    return Sequential(layers, input_shape=input_shape, device=device, dtype=dtype, seed=seed)


def small_vgg(input_shape=(3, 32, 32), num_classes: int = 10, width: int = 32, *, device=None,
              dtype: str = "float32", seed: int | None = 0):
    """A small VGG-style network (Simonyan and Zisserman, 2015) for 32x32 colour images.

    Two blocks of two 3x3 convolutions ("same" padding, ReLU, He init), each block followed by
    2x2 max pooling, then one dense layer:

        conv w -> conv w -> pool 2 -> conv 2w -> conv 2w -> pool 2 -> dense -> num_classes

    With ``width=32`` on (3, 32, 32): 32-32-64-64 channels, 64x8x8 = 4096 features into the
    dense layer, 106,538 parameters.

    Args:
        input_shape: (C, H, W) per image; H and W at least 4 (each pooling halves them,
            rounding down), e.g. (1, 28, 28) for MNIST.
        num_classes: outputs of the dense layer.
        width: channels of the first block's convolutions; the second block has twice as many.
        device, dtype, seed: as for :class:`~portacnn.model.Sequential`.

    Returns:
        A built :class:`~portacnn.model.Sequential` emitting logits (N, num_classes).
    """
    if len(input_shape) != 3 or min(input_shape[1:]) < 4:
        raise ValueError(f"small_vgg takes (C, H, W) images of at least 4x4, got {input_shape}")
    if not (isinstance(width, int) and width >= 1):
        raise ValueError(f"width must be a positive int, got {width!r}")

    def conv(filters, name):
        return [Conv2D(filters, 3, padding="same", init="he", name=name), ReLU()]

    layers = [
        *conv(width, "conv1"), *conv(width, "conv2"), MaxPool2D(2, name="pool1"),
        *conv(2 * width, "conv3"), *conv(2 * width, "conv4"), MaxPool2D(2, name="pool2"),
        Flatten(), Dense(num_classes, init="glorot", name="fc"),
    ]
    return Sequential(layers, input_shape=input_shape, device=device, dtype=dtype, seed=seed)


def _conv_bn(x, filters: int, kernel_size: int, stride: int, conv: str, bn: str):
    """A convolution named ``conv`` without bias (the batch norm's shift replaces it; He
    init) and its batch norm named ``bn``, called on the symbolic tensor ``x``."""
    y = Conv2D(filters, kernel_size, stride, padding=kernel_size // 2, bias=False, init="he",
               name=conv)(x)
    return BatchNorm2D(name=bn)(y)


def _basic_block(x, filters: int, stride: int, name: str):
    """He et al.'s basic block: conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU. The
    shortcut is ``x`` itself, or where the block changes the shape (stride 2, more channels)
    a 1x1 convolution of that stride and a batch norm (a projection: option B)."""
    h = ReLU()(_conv_bn(x, filters, 3, stride, f"{name}.conv1", f"{name}.bn1"))
    h = _conv_bn(h, filters, 3, 1, f"{name}.conv2", f"{name}.bn2")
    shortcut = x
    if stride != 1 or x.shape[0] != filters:
        shortcut = _conv_bn(x, filters, 1, stride, f"{name}.proj", f"{name}.proj_bn")
    return ReLU()(Add(name=f"{name}.add")([h, shortcut]))


def resnet20(input_shape=(3, 32, 32), num_classes: int = 10, *, device=None,
             dtype: str = "float32", seed: int | None = 0):
    """ResNet-20 (He et al., 2016, "Deep Residual Learning for Image Recognition", section
    4.2: the CIFAR-10 network with n = 3), a graph model (:class:`~portacnn.model.Model`).

        conv3x3 16 - BN - ReLU
        3 stages of 3 basic blocks, 16, 32, 64 channels (conv3x3-BN-ReLU-conv3x3-BN + shortcut,
        ReLU); the first block of stages 2 and 3 has stride 2
        global average pooling - dense num_classes

    Where a block halves the image and doubles the channels, its shortcut is a projection,
    a 1x1 convolution of stride 2 and a batch norm: the paper's option B (its CIFAR-10 runs
    used option A, zero-padded identity shortcuts, which has no parameters). Convolutions have
    no bias (each is followed by a batch norm) and He-normal weights. On (3, 32, 32):
    19 3x3 convolutions and the dense layer (the 20 of the name) and two 1x1 projections,
    272,474 parameters (option A: 269,722) and 1,568 running statistics of the batch norms.
    Layers are named by stage and block: ``s2.1.conv1``, ``s2.1.proj``, ``s2.1.add``.

    Under :class:`~portacnn.distributed.DataParallel` its batch norms normalise over every
    process's rows of a batch, as in one process.

    Args:
        input_shape: (C, H, W) per image; any size (the pooling is global), e.g. (1, 28, 28).
        num_classes: outputs of the dense layer.
        device, dtype, seed: as for :class:`~portacnn.model.Sequential`.

    Returns:
        A built :class:`~portacnn.model.Model` emitting logits (N, num_classes).
    """
    if len(input_shape) != 3:
        raise ValueError(f"resnet20 takes (C, H, W) images, got input_shape={input_shape}")
    x = Input(input_shape)
    h = ReLU()(_conv_bn(x, 16, 3, 1, "conv1", "bn1"))
    for stage, filters in enumerate((16, 32, 64), start=1):
        for block in range(1, 4):
            stride = 2 if stage > 1 and block == 1 else 1
            h = _basic_block(h, filters, stride, f"s{stage}.{block}")
    logits = Dense(num_classes, name="fc")(GlobalAvgPool2D()(h))
    return Model(x, logits, device=device, dtype=dtype, seed=seed)


MODELS = {
    "lenet5": lambda **kw: lenet5("tanh", "avg", **kw),
    "lenet5-relu": lambda **kw: lenet5("relu", "max", **kw),
    "lenet5-bn": lambda **kw: lenet5("relu", "max", batchnorm=True, **kw),
    "small_vgg": small_vgg,
    "resnet20": resnet20,
}
