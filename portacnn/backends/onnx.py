"""The ONNX backend: ``ndonnx`` arrays, which record an ONNX graph instead of computing.

It serves export (:meth:`portacnn.Sequential.export_onnx`): a model's inference forward run on
an ``ndonnx`` input of symbolic batch size is the graph. Weights become constants of that graph.
Nothing here trains: an ``ndonnx`` array holds no values (unless it is a constant), so the
backend exists for tracing, and its kernel set (:class:`portacnn.kernels.OnnxKernels`) replaces
the portable convolution, pooling and dense kernels with ONNX's own operators.
"""

from __future__ import annotations

from ..kernels import OnnxKernels
from .base import Backend
from .errors import import_library
from .registry import register

__all__ = ["OnnxBackend"]


@register
class OnnxBackend(Backend):
    """``ndonnx``: arrays that build an ONNX graph (device strings ``"onnx"``, ``"ndonnx"``)."""

    library = "ndonnx"
    aliases = ("onnx",)
    kernels = OnnxKernels()

    @classmethod
    def parse(cls, key: str):
        return key in ("onnx", "ndonnx"), None

    @classmethod
    def create(cls, device=None) -> "OnnxBackend":
        ndx = import_library("ndonnx", 'pip install "portacnn[onnx]"')
        return cls(ndx, device, native=ndx)

    @staticmethod
    def array_to_numpy(x):
        """The value of a constant ``ndonnx`` array (an input's graph has none: ValueError)."""
        return x.unwrap_numpy()
