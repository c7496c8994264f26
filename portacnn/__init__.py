"""portacnn: a readable CNN library written once against the Python array API standard.

The same layers, im2col/col2im and training code run on NumPy (CPU) and CuPy (GPU); the
backend is chosen in :mod:`portacnn.runtime` and nowhere else.
"""

from .layers import (AvgPool2D, Conv2D, Dense, Dropout, Flatten, Layer, MaxPool2D, ReLU,
                     Sigmoid, Tanh)
from .runtime import Backend, DeviceError, get_backend

__version__ = "0.1.0"

__all__ = [
    "AvgPool2D", "Backend", "Conv2D", "Dense", "DeviceError", "Dropout", "Flatten", "Layer",
    "MaxPool2D", "ReLU", "Sigmoid", "Tanh", "get_backend", "__version__",
]
