"""The ONNX backend's kernel set: :class:`OnnxKernels`, the portable set with ONNX's operators.

On ``ndonnx`` arrays every portable kernel traces into a graph operation by operation: im2col
becomes kh·kw slices and a concatenation, pooling a window stack and a reduction. Where ONNX
has an operator for the whole kernel, this set emits it instead, through ``spox`` (the graph
builder under ``ndonnx``): a runtime then runs its own convolution and pooling code. Each
override takes the same arguments and returns the same values as the portable kernel of its
name, and is tested against that kernel traced (tests/test_onnx.py).

| override | ONNX operator |
|---|---|
| ``conv2d_forward`` | ``Conv`` (``group`` for grouped convolutions; ``Pad`` mode ``edge`` first for replicate padding) |
| ``max_pool2d_forward`` | ``MaxPool`` (its padding is -inf, as portacnn's) |
| ``avg_pool2d_forward`` | ``AveragePool`` with ``count_include_pad=1`` (portacnn divides by the full window) |
| ``dense_forward`` | ``Gemm`` with ``transB=1`` (the weight is (out, in)) |
| ``relu``, ``softmax`` | ``Relu`` (a runtime fuses it into the ``Conv`` before it), ``Softmax`` |

The overrides serve inference only (``inference=True``, what export traces): asked for a
cache, a kernel runs the portable one, whose backward reads it. ``spox`` is imported when a
kernel runs, so this module loads without it.
"""

from __future__ import annotations

from . import activations, conv, dense, pooling
from .sets import Kernels

__all__ = ["OnnxKernels"]

def _op():
    # ONNX's operators as spox functions (opset 21); imported here, not with the module.
    import spox.opset.ai.onnx.v21 as op

    return op


def _var(x):
    return x.unwrap_spox()


def _array(like, var):
    # Back to an ndonnx array (the namespace of ``like``).
    return like.__array_namespace__().asarray(var)


def _padded(x, g):
    """``x``'s graph variable and the ``pads`` attribute of an ONNX window operator: the
    geometry's zero padding as the operator's own, replicate padding as an ``edge`` Pad."""
    op = _op()
    pads = [g.top, g.left, g.bottom, g.right]
    if g.mode != "replicate" or not g.padded:
        return _var(x), pads
    width = op.const([0, 0, g.top, g.left, 0, 0, g.bottom, g.right])
    return op.pad(_var(x), width, mode="edge"), [0, 0, 0, 0]


def conv2d_forward(x, weight, bias=None, stride=1, padding=0, padding_mode="zeros", *,
                   groups: int = 1, inference: bool = False):
    """:func:`~.conv.conv2d_forward` as one ONNX ``Conv``. Returns ``(y, None)``."""
    if not inference:
        return conv.conv2d_forward(x, weight, bias, stride, padding, padding_mode,
                                   groups=groups, inference=False)
    g = conv.conv_geometry(x, weight, stride, padding, padding_mode, groups)
    var, pads = _padded(x, g)
    inputs = [var, _var(weight)] + ([] if bias is None else [_var(bias)])
    y = _op().conv(*inputs, kernel_shape=[g.kh, g.kw], strides=[g.sh, g.sw], pads=pads,
                   group=groups)
    return _array(x, y), None


def _pool(x, kernel_size, stride, padding, padding_mode, kind: str):
    g = pooling.pool_geometry(x, kernel_size, stride, padding, padding_mode)
    var, pads = _padded(x, g)
    common = {"kernel_shape": [g.kh, g.kw], "strides": [g.sh, g.sw], "pads": pads}
    if kind == "max":
        y = _op().max_pool(var, **common)[0]
    else:
        y = _op().average_pool(var, count_include_pad=1, **common)
    return _array(x, y), None


def max_pool2d_forward(x, kernel_size, stride=None, padding=0, padding_mode="zeros", *,
                       inference: bool = False):
    """:func:`~.pooling.max_pool2d_forward` as one ONNX ``MaxPool``. Returns ``(y, None)``."""
    if not inference:
        return pooling.max_pool2d_forward(x, kernel_size, stride, padding, padding_mode)
    return _pool(x, kernel_size, stride, padding, padding_mode, "max")


def avg_pool2d_forward(x, kernel_size, stride=None, padding=0, padding_mode="zeros", *,
                       inference: bool = False):
    """:func:`~.pooling.avg_pool2d_forward` as one ONNX ``AveragePool``. Returns
    ``(y, None)``."""
    if not inference:
        return pooling.avg_pool2d_forward(x, kernel_size, stride, padding, padding_mode)
    return _pool(x, kernel_size, stride, padding, padding_mode, "avg")


def dense_forward(x, weight, bias=None):
    """:func:`~.dense.dense_forward` as one ONNX ``Gemm`` (``x @ weight.T + bias``)."""
    if x.ndim != 2 or weight.ndim != 2 or x.shape[1] != weight.shape[1]:
        return dense.dense_forward(x, weight, bias)        # raises, naming the shapes
    inputs = [_var(x), _var(weight)] + ([] if bias is None else [_var(bias)])
    return _array(x, _op().gemm(*inputs, transB=1))


def relu(x):
    """:func:`~.activations.relu` as ONNX ``Relu``."""
    return _array(x, _op().relu(_var(x)))


def softmax(x, axis: int = -1):
    """:func:`~.activations.softmax` as ONNX ``Softmax`` along ``axis``."""
    if not -x.ndim <= axis < x.ndim:
        return activations.softmax(x, axis)                 # raises, naming the axis
    return _array(x, _op().softmax(_var(x), axis=axis))


class OnnxKernels(Kernels):
    """:class:`~.sets.Kernels` with ONNX's own operators for convolution, max and average
    pooling, dense layers, ReLU and softmax (the module's table); every other kernel traces
    as written."""

    conv2d_forward = staticmethod(conv2d_forward)
    max_pool2d_forward = staticmethod(max_pool2d_forward)
    avg_pool2d_forward = staticmethod(avg_pool2d_forward)
    dense_forward = staticmethod(dense_forward)
    relu = staticmethod(relu)
    softmax = staticmethod(softmax)
