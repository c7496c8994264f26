"""ONNX export by tracing: a model's inference forward run on ``ndonnx`` arrays is its graph.

No layer has a converter. :func:`export_onnx` points every layer at the ONNX backend
(:class:`~portacnn.backends.onnx.OnnxBackend`) for the length of one forward: its parameters
and buffers become constants of the graph (moved to the graph's initializers, where ONNX keeps
weights) and its kernels are the ONNX kernel set, which emits ONNX's own ``Conv``, pooling and
``Gemm`` operators and traces every other kernel, the portable code, operation by operation.
The input is ``"input"``, of shape ("N", *input_shape) with a symbolic batch size ``N``; the
output is what :meth:`~.base.ModelBase.predict` returns: ``"probabilities"`` (the softmax) for
the cross-entropy loss, ``"outputs"`` for MSE. The model itself is left as it was.
"""

from __future__ import annotations

import contextlib

from .. import checkpoint
from ..backends import get_backend, to_numpy
from ..scalars import positive_int

__all__ = ["export_onnx", "OnnxExportError", "output_name"]


class OnnxExportError(RuntimeError):
    """A layer's inference forward could not be traced into an ONNX graph."""


def output_name(model) -> str:
    """The graph's output: ``"probabilities"`` for the cross-entropy loss, else ``"outputs"``."""
    return "probabilities" if model.loss_name == "cross_entropy" else "outputs"


def export_onnx(model, path, *, batch: int | None = None):
    """Write ``model``'s inference forward to ``path`` as an ONNX model; returns the path.

    ``batch`` fixes the batch size; None (the default) leaves it symbolic, ``"N"``. The file is
    written atomically: a failed export leaves nothing behind. Raises :class:`OnnxExportError`
    naming the layer that cannot be traced, and ``DeviceError`` without ``ndonnx`` (``pip
    install "portacnn[onnx]"``).
    """
    model.require_built()
    batch = "N" if batch is None else positive_int(batch, "batch")
    backend = get_backend("onnx")
    ndx = backend.xp
    x = ndx.argument(shape=(batch, *model.input_shape),
                     dtype=backend.dtype(model.dtype_name))
    with _traced(model, backend):
        y = model.forward(x)
        if model.loss_name == "cross_entropy":
            y = backend.kernels.softmax(y, axis=1)
    proto = ndx.build({"input": x}, {output_name(model): y})
    _constants_to_initializers(proto.graph)
    _drop_unused_outputs(proto.graph)
    proto.producer_name = "portacnn"
    return checkpoint.write_atomic(path, proto.SerializeToString())


@contextlib.contextmanager
def _traced(model, backend):
    """Run ``model`` in eval mode on ``backend`` inside the block: each layer's arrays as that
    backend's constants, its forward re-raising a failure as :class:`OnnxExportError` naming
    it. Everything is put back on leaving, the original arrays untouched."""
    saved = [(layer, layer.backend, dict(layer.params), dict(layer.buffers), layer._cache)
             for layer in model.layers]
    state = (model.backend, model.training, model._forward_mode)
    try:
        model.eval()
        model.backend = backend
        for layer, _, params, buffers, _ in saved:
            layer.backend = backend
            for store, arrays in ((layer.params, params), (layer.buffers, buffers)):
                for key, value in arrays.items():
                    store[key] = backend.asarray(to_numpy(value))
            layer._forward = _naming_failures(layer, layer._forward)
        yield
    finally:
        model.backend, training, model._forward_mode = state
        for layer, old_backend, params, buffers, cache in saved:
            layer.__dict__.pop("_forward", None)
            layer.backend, layer._cache = old_backend, cache
            layer.params.update(params)
            layer.buffers.update(buffers)
        model.train(training)


def _naming_failures(layer, forward):
    def traced_forward(x):
        try:
            return forward(x)
        except OnnxExportError:
            raise
        except Exception as exc:
            raise OnnxExportError(
                f"{layer.name} ({type(layer).__name__}) cannot be exported to ONNX: its forward "
                f"failed on a traced ndonnx array with {type(exc).__name__}: {exc}") from exc

    return traced_forward


def _constants_to_initializers(graph) -> None:
    """Move each ``Constant`` node holding a tensor into ``graph.initializer`` (the weights'
    place in an ONNX file: runtimes load them once, tools list them as parameters)."""
    kept = []
    for node in graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 \
                and node.attribute[0].name == "value":
            tensor = node.attribute[0].t
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
        else:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)


def _drop_unused_outputs(graph) -> None:
    """Give each node's trailing outputs that nothing reads the empty name, which ONNX reads
    as not asked for (``MaxPool``'s ``Indices``: a runtime then does not compute them)."""
    read = {name for node in graph.node for name in node.input}
    read |= {out.name for out in graph.output}
    for node in graph.node:
        while len(node.output) > 1 and node.output[-1] not in read:
            node.output.pop()
