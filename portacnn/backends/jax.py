"""The JAX backend: ``jax.numpy`` through array-api-compat, on JAX's default device.

It is the generic :class:`~.base.Backend` with one difference: its kernel set,
:class:`~.jax_kernels.JaxKernels`, whose convolution is XLA's own.
"""

from __future__ import annotations

import array_api_compat

from .base import Backend
from .errors import import_library
from .jax_kernels import JaxKernels
from .registry import register

__all__ = ["JaxBackend"]


@register
class JaxBackend(Backend):
    """``jax.numpy`` arrays on ``device`` (default: JAX's default device)."""

    library = "jax"
    aliases = ()
    kernels = JaxKernels()

    @classmethod
    def parse(cls, key: str):
        return key == "jax", None

    @classmethod
    def create(cls, device=None) -> "JaxBackend":
        jnp = import_library("jax.numpy", "pip install jax")
        return cls(array_api_compat.array_namespace(jnp.empty(0)), device,
                   native=import_library("jax", "pip install jax"))
