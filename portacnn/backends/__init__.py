"""Backends: one small class per array library, chosen by a registry, each naming its kernel set.

    >>> from portacnn.backends import get_backend
    >>> be = get_backend("cpu")          # NumPy; "gpu" / "cuda:1" give CuPy, "jax" JAX
    >>> x = be.asarray([[1.0, 2.0]])     # on the backend's device
    >>> be.to_numpy(x * 2)
    array([[2., 4.]])

| class | library | device strings |
|---|---|---|
| :class:`NumpyBackend` | NumPy | ``"cpu"``, ``"numpy"`` |
| :class:`CupyBackend` | CuPy | ``"gpu"``, ``"cuda"``, ``"cuda:N"``, ``"cupy"`` |
| :class:`TorchBackend` | PyTorch | ``"torch"`` |
| :class:`StrictBackend` | array_api_strict | ``"array_api_strict"`` |
| :class:`OnnxBackend` | ndonnx (arrays that record an ONNX graph: export) | ``"onnx"``, ``"ndonnx"`` |
| :class:`JaxBackend` | JAX (its kernels' convolution is XLA's) | ``"jax"`` |
| :class:`Backend` (generic) | any other namespace array-api-compat recognises | the module |

The modules: ``base`` (the :class:`Backend` class, :func:`to_numpy`), one module per library
class (``numpy``, ``cupy``, ``torch``, ``jax``, ``strict``, ``onnx``), ``jax_kernels`` (JAX's
kernel set), ``registry`` (which class serves which library), ``selection``
(:func:`get_backend`, :func:`backend_of`), ``errors``, ``memory`` (:class:`MemoryPeak`, for
benchmarks), ``random`` (:class:`PortableRNG`) and ``cupy_doctor`` (CuPy's smoke test and
install diagnostics).

Nothing else in portacnn imports an array library or asks which backend runs: kernels infer
``xp`` from their inputs (:func:`namespace`), layers and models ask their backend.
"""

from . import cupy, jax, numpy, onnx, strict, torch  # noqa: F401  (each registers its class)
from .base import Backend, describe_array, is_host_array, namespace, on_device, to_numpy
from .cupy import CupyBackend
from .errors import DeviceError, NoDeviceError
from .jax import JaxBackend
from .memory import MemoryPeak
from .numpy import NumpyBackend
from .onnx import OnnxBackend
from .random import PortableRNG
from .registry import register
from .selection import ENV_VAR, backend_of, get_backend, registered
from .strict import StrictBackend
from .torch import TorchBackend

__all__ = ["Backend", "CupyBackend", "DeviceError", "ENV_VAR", "JaxBackend", "MemoryPeak",
           "NoDeviceError", "NumpyBackend", "OnnxBackend", "PortableRNG", "StrictBackend",
           "TorchBackend", "backend_of", "describe_array", "get_backend", "is_host_array",
           "namespace", "on_device", "register", "registered", "to_numpy"]
