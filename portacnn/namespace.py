"""Which array-API namespace an array belongs to: the one question a kernel asks of its inputs.

This is portacnn's ground floor. It imports no array library (``array_api_compat`` answers the
question) and nothing else from portacnn, so the kernels above it stay pure functions of their
inputs and the backends above those can name the kernel set they run.

    >>> xp = namespace(x, weight)      # array_api_compat.numpy for two NumPy arrays
"""

from __future__ import annotations

import array_api_compat

__all__ = ["namespace", "describe_array", "library_name"]


def library_name(xp) -> str:
    """The library behind a namespace: ``array_api_compat.numpy`` -> ``"numpy"``,
    ``jax.numpy`` -> ``"jax"``."""
    return xp.__name__.removeprefix("array_api_compat.").split(".")[0]


# For these libraries the namespace depends only on the array's type, so it is looked up once
# per type: kernels ask dozens of times a step, and array_namespace's full search is slow.
# (JAX's arrays are of several types whose namespace is found on each call.)
_CACHEABLE = ("numpy", "cupy", "torch", "array_api_strict")
_NAMESPACE_BY_TYPE: dict = {}


def namespace(*arrays):
    """The array-API namespace of ``arrays``, with an error that says how to fix mixed inputs.

    Kernels call this to infer ``xp`` from their inputs. Arrays from two libraries (a NumPy
    batch and CuPy weights) or on two devices raise a ``TypeError`` that names both.
    """
    kind = type(arrays[0])
    xp = _NAMESPACE_BY_TYPE.get(kind)
    if xp is not None and all(type(a) is kind for a in arrays):
        if len(arrays) == 1:
            return xp
        device = arrays[0].device
        if all(a.device == device for a in arrays):
            return xp
    try:
        xp = array_api_compat.array_namespace(*arrays)
    except TypeError as exc:
        kinds = sorted({describe_array(a) for a in arrays if a is not None})
        raise TypeError(
            f"arrays from different libraries were mixed ({' and '.join(kinds)}); "
            "move them to one backend first, e.g. with model.backend.asarray(x)"
        ) from exc
    # a traced array (jax.jit) has no device yet (None): it runs where its program is placed
    found = (array_api_compat.device(a) for a in arrays if a is not None)
    devices = {str(d) for d in found if d is not None}
    if len(devices) > 1:
        raise TypeError(
            f"arrays on different devices were mixed ({', '.join(sorted(devices))}); "
            "move them to one device first, e.g. with model.backend.asarray(x)"
        )
    if (len({type(a) for a in arrays}) == 1 and library_name(xp) in _CACHEABLE
            and hasattr(arrays[0], "device")):
        _NAMESPACE_BY_TYPE[kind] = xp
    return xp


def describe_array(x) -> str:
    """``"numpy array on cpu"`` style description of an array, for error messages."""
    try:
        xp = array_api_compat.array_namespace(x)
    except TypeError:
        return type(x).__name__
    name = xp.__name__.removeprefix("array_api_compat.")
    return f"{name} array on {array_api_compat.device(x)}"
