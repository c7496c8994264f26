"""Pure forward/backward functions written once against the array API standard.

Each function infers ``xp`` from its inputs (:func:`portacnn.backends.namespace`), imports no
array library and writes into no existing array, so the same code runs on NumPy, CuPy,
PyTorch, JAX and array_api_strict. These portable kernels are the reference the docs teach.

A backend may select faster versions of some of them by name: :func:`kernel` returns the one
to call. The NumPy backend selects the ``"cpu"`` set (:mod:`.cpu`); every override is tested
against the portable kernel and the naive loops (see docs/performance.md for what each buys).
"""

from . import cpu
from .activations import (log_softmax, relu, relu_backward, sigmoid, sigmoid_backward, softmax,
                          tanh, tanh_backward)
from .batchnorm import batchnorm_backward, batchnorm_forward
from .conv import conv2d_backward, conv2d_forward
from .dense import dense_backward, dense_forward
from .dropout import dropout_backward, dropout_forward
from .losses import mse, one_hot, softmax_cross_entropy
from .pooling import (avg_pool2d_backward, avg_pool2d_forward, max_pool2d_backward,
                      max_pool2d_forward, min_pool2d_backward, min_pool2d_forward)
from .unfold import col2im, geometry, im2col
from .upsample import upsample_nearest_backward, upsample_nearest_forward

__all__ = [
    "OVERRIDES", "avg_pool2d_backward", "avg_pool2d_forward", "batchnorm_backward",
    "batchnorm_forward", "col2im", "conv2d_backward", "conv2d_forward", "dense_backward",
    "dense_forward", "dropout_backward", "dropout_forward", "geometry", "im2col", "kernel",
    "log_softmax", "max_pool2d_backward", "max_pool2d_forward", "min_pool2d_backward",
    "min_pool2d_forward", "mse", "one_hot", "relu", "relu_backward", "sigmoid",
    "sigmoid_backward", "softmax", "softmax_cross_entropy", "tanh", "tanh_backward",
    "upsample_nearest_backward", "upsample_nearest_forward",
]

# Named sets of faster kernels a backend may select (``Backend.kernel_overrides``).
OVERRIDES: dict[str, dict] = {"cpu": cpu.OVERRIDES}


def kernel(name: str, backend=None):
    """The implementation of kernel ``name`` to run on ``backend``: the override from the set
    the backend selects (``backend.kernel_overrides``) if it has one, else the portable
    function of that name. Both take the same arguments and return the same values.

        >>> conv = kernel("conv2d_forward", get_backend("cpu"))   # the CPU override
        >>> y, cache = conv(x, weight, bias, stride=1, padding=2)
    """
    portable = globals().get(name)
    if portable is None or name not in __all__:
        raise KeyError(f"no kernel named {name!r}")
    chosen = OVERRIDES.get(getattr(backend, "kernel_overrides", None), {})
    return chosen.get(name, portable)
