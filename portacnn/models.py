"""Ready-made networks."""

from __future__ import annotations

from .layers import AvgPool2D, BatchNorm1D, BatchNorm2D, Conv2D, Dense, Flatten, MaxPool2D, ReLU, Tanh
from .model import Sequential

__all__ = ["lenet5", "MODELS"]


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


MODELS = {
    "lenet5": lambda **kw: lenet5("tanh", "avg", **kw),
    "lenet5-relu": lambda **kw: lenet5("relu", "max", **kw),
    "lenet5-bn": lambda **kw: lenet5("relu", "max", batchnorm=True, **kw),
}
