"""Pure forward/backward functions written against the array API standard.

Each function infers ``xp`` from its inputs (:func:`portacnn.runtime.namespace`) and imports no
array library. Layers in :mod:`portacnn.layers` are thin classes over these.
"""

from .activations import (log_softmax, relu, relu_backward, sigmoid, sigmoid_backward, softmax,
                          tanh, tanh_backward)
from .conv import conv2d_backward, conv2d_forward
from .dense import dense_backward, dense_forward
from .dropout import dropout_backward, dropout_forward
from .unfold import col2im, geometry, im2col
from .losses import mse, one_hot, softmax_cross_entropy
from .batchnorm import batchnorm_backward, batchnorm_forward
from .pooling import (avg_pool2d_backward, avg_pool2d_forward, max_pool2d_backward,
                      max_pool2d_forward, min_pool2d_backward, min_pool2d_forward)
from .upsample import upsample_nearest_backward, upsample_nearest_forward

__all__ = [
    "avg_pool2d_backward", "avg_pool2d_forward", "batchnorm_backward", "batchnorm_forward",
    "col2im", "min_pool2d_backward", "min_pool2d_forward", "upsample_nearest_backward",
    "upsample_nearest_forward", "conv2d_backward", "conv2d_forward",
    "dense_backward", "dense_forward", "dropout_backward", "dropout_forward", "geometry",
    "im2col", "log_softmax", "max_pool2d_backward", "max_pool2d_forward", "mse", "one_hot",
    "relu", "relu_backward", "sigmoid", "sigmoid_backward", "softmax", "softmax_cross_entropy",
    "tanh", "tanh_backward",
]
