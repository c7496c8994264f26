"""portacnn: a readable CNN library written once against the Python array API standard.

The same layers, im2col/col2im and training code run on NumPy (CPU), CuPy (GPU), PyTorch, JAX
and array_api_strict; the backend is chosen in :mod:`portacnn.backends` and nowhere else.

    >>> import portacnn
    >>> (x, y), (xt, yt) = portacnn.data.load_mnist()          # bundled real-MNIST sample
    >>> model = portacnn.models.lenet5(device="cpu")
    >>> model.fit(portacnn.data.normalize(x), y, epochs=10, optimizer=portacnn.optim.SGD(0.02, 0.9))
"""

from . import backends, callbacks, data, kernels, models, optim, schedules
from .backends import Backend, DeviceError, get_backend
from .checkpoint import CheckpointError
from .layers import (Add, AvgPool2D, BatchNorm1D, BatchNorm2D, Buffer, Concatenate, Conv2D, Dense,
                     Dropout, Flatten, GlobalAvgPool2D, Identity, Input, Layer, MaxPool2D,
                     MinPool2D, Parameter, ReLU, Sigmoid, SymbolicTensor, Tanh, Upsample2D)
from .model import Model, OnnxExportError, Sequential, load
from .training import History, RandomCropFlip

__version__ = "0.2.0"

__all__ = [
    "Add", "AvgPool2D", "Backend", "BatchNorm1D", "BatchNorm2D", "Buffer", "CheckpointError",
    "Concatenate", "Conv2D", "Dense", "DeviceError", "Dropout", "Flatten", "GlobalAvgPool2D",
    "History", "Identity", "Input", "Layer", "MaxPool2D", "MinPool2D", "Model", "OnnxExportError",
    "Parameter",
    "RandomCropFlip", "ReLU", "Sequential", "Sigmoid", "SymbolicTensor", "Tanh", "Upsample2D",
    "backends", "callbacks", "data", "get_backend", "kernels", "load", "models", "optim",
    "schedules", "__version__",
]
