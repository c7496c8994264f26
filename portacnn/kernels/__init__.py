"""Pure forward/backward functions written once against the array API standard.

Each function infers ``xp`` from its inputs (:func:`portacnn.namespace.namespace`), imports
no array library and writes into no existing array, so the same code runs on NumPy, CuPy,
PyTorch, JAX and array_api_strict. These portable kernels are the reference the docs teach.

A backend runs a kernel *set* (``backend.kernels``): :class:`Kernels` holds the portable
functions as attributes, and a backend's faster versions are a subclass that replaces a few
of them (:class:`CpuKernels`, the NumPy backend's, and :class:`GpuKernels`, CuPy's; see
:mod:`.sets`).

Convolution and pooling share three helper modules: :mod:`.shapes` (arguments checked and
resolved to a :class:`Geometry`, the output-size formulas), :mod:`.padding` (``pad`` and its
adjoint ``unpad``) and :mod:`.columns` (``im2col``, ``col2im`` and the window stacks).
"""

from .activations import (log_softmax, relu, relu_backward, sigmoid, sigmoid_backward, softmax,
                          tanh, tanh_backward)
from .batchnorm import batchnorm_backward, batchnorm_forward
from .columns import col2im, im2col
from .conv import conv2d_backward, conv2d_forward
from .cpu import CpuKernels
from .dense import dense_backward, dense_forward
from .gpu import GpuKernels
from .onnx_ops import OnnxKernels
from .dropout import dropout_backward, dropout_forward
from .losses import mse, one_hot, softmax_cross_entropy
from .merge import add_backward, add_forward, concatenate_backward, concatenate_forward
from .pooling import (avg_pool2d_backward, avg_pool2d_forward, global_avg_pool2d_backward,
                      global_avg_pool2d_forward, max_pool2d_backward, max_pool2d_forward,
                      min_pool2d_backward, min_pool2d_forward)
from .sets import Kernels
from .shapes import Geometry, geometry
from .upsample import upsample_nearest_backward, upsample_nearest_forward

__all__ = [
    "CpuKernels", "Geometry", "GpuKernels", "Kernels", "OnnxKernels", "add_backward", "add_forward", "avg_pool2d_backward",
    "avg_pool2d_forward", "batchnorm_backward", "batchnorm_forward", "col2im",
    "concatenate_backward", "concatenate_forward", "conv2d_backward", "conv2d_forward",
    "dense_backward", "dense_forward", "dropout_backward", "dropout_forward", "geometry",
    "global_avg_pool2d_backward", "global_avg_pool2d_forward",
    "im2col", "log_softmax", "max_pool2d_backward", "max_pool2d_forward",
    "min_pool2d_backward", "min_pool2d_forward", "mse", "one_hot", "relu", "relu_backward",
    "sigmoid", "sigmoid_backward", "softmax", "softmax_cross_entropy", "tanh", "tanh_backward",
    "upsample_nearest_backward", "upsample_nearest_forward",
]
