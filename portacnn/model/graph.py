"""``Model``: layers in a graph, written as in Keras's functional API: skip connections,
branches, shared layers.

    >>> x = portacnn.Input((3, 32, 32))
    >>> h = ReLU()(Conv2D(16, 3, padding="same")(x))
    >>> h = ReLU()(Add()([Conv2D(16, 3, padding="same")(h), h]))     # a residual block
    >>> model = portacnn.Model(x, Dense(10)(Flatten()(h)), device="cpu", seed=0)
    >>> model.summary()                       # each layer's inputs too
    >>> model.fit(x_train, y_train, epochs=5)     # as Sequential; save, load, DataParallel too

Calling a layer on a symbolic tensor records the call (:mod:`portacnn.layers.symbolic`);
``Model(inputs, outputs)`` walks those records back from the output, numbers the tensors
(0 is the input, ``k + 1`` the output of call ``k``, the calls in the order they were made,
which puts each after its inputs) and builds every layer at once. ``forward`` runs the calls
in that order, keeping each tensor until its last reader has run; ``backward`` runs them in
reverse and adds up the gradients of a tensor read by several calls. A layer called more than
once (shared weights) takes one input shape; each call's forward cache is kept, and the
gradients of its calls are added.

Everything else (``fit``, ``evaluate``, ``predict``, ``train_step``, ``parameters``, ``to``,
``save``...) is :class:`~.base.ModelBase`'s, shared with :class:`~.sequential.Sequential`.
"""

from __future__ import annotations

from ..backends import on_device
from ..layers import Layer
from ..layers.base import unchanged_on_error
from ..layers.symbolic import SymbolicTensor, is_symbolic
from .base import ModelBase

__all__ = ["Model"]


class _Call:
    """One call of a layer in the graph: ``inputs`` are tensor numbers, ``frees`` the tensors
    no later call reads, ``shared`` whether the layer has other calls."""

    __slots__ = ("layer", "inputs", "frees", "shared")

    def __init__(self, layer: Layer, inputs: tuple):
        self.layer, self.inputs, self.frees, self.shared = layer, inputs, (), False


def _one(tensors, what: str) -> SymbolicTensor:
    """The one SymbolicTensor of ``tensors`` (a tensor, or a list or tuple of one)."""
    if isinstance(tensors, (list, tuple)):
        if len(tensors) != 1:
            raise ValueError(f"Model takes one input and one output (fit feeds one array x and "
                             f"compares one output with y), got {len(tensors)} {what}")
        tensors = tensors[0]
    if not isinstance(tensors, SymbolicTensor):
        raise TypeError(f"Model's {what} must be symbolic tensors, made by portacnn.Input(shape) "
                        f"and by calling layers on them, got {type(tensors).__name__}")
    return tensors


def _shape_text(shape) -> str:
    return f"(N, {', '.join(map(str, shape))})"


def _ancestors(output: SymbolicTensor) -> list[SymbolicTensor]:
    """Every tensor ``output`` is computed from, itself included, in creation order."""
    seen, stack = {}, [output]
    while stack:
        tensor = stack.pop()
        if id(tensor) not in seen:
            seen[id(tensor)] = tensor
            stack.extend(tensor.inputs)
    return sorted(seen.values(), key=lambda t: t.serial)


class Model(ModelBase):
    """A graph of layers from ``inputs`` to ``outputs`` (see the module docstring).

    Args:
        inputs: the model's input, ``portacnn.Input((C, H, W))`` (or a list of that one).
        outputs: the tensor the model returns (logits), computed from ``inputs`` by calling
            layers (or a list of that one).
        device, dtype, seed, loss: as for :class:`~.sequential.Sequential`; the model is built
            at once (every shape is known from ``inputs``), the weights drawn in the order of
            the layers' first calls.

    Attributes:
        layers: each layer once, in the order of its first call (the ``i`` of the parameter
            names ``"{i}.weight"``).

    Raises:
        TypeError: ``inputs`` or ``outputs`` not symbolic tensors; a layer that is not a
            portacnn layer.
        ValueError: several inputs or outputs; an input that is not a ``portacnn.Input``; an
            output that depends on another ``Input`` (not reachable from ``inputs``) or not on
            ``inputs`` at all; no layer between them; a layer called on two input shapes; a
            layer whose dtype is not the model's or that cannot be built for its input.
    """

    def __init__(self, inputs, outputs, *, device=None, dtype: str = "float32",
                 seed: int | None = 0, loss: str = "cross_entropy"):
        super().__init__(device=device, dtype=dtype, seed=seed, loss=loss)
        source, target = _one(inputs, "inputs"), _one(outputs, "outputs")
        if source.layer is not None:
            raise ValueError(f"Model's inputs must be portacnn.Input tensors; this one is the "
                             f"output of {source.layer.name}")
        tensors = _ancestors(target)
        strays = [t for t in tensors if t.layer is None and t is not source]
        if tensors[0] is not source:
            raise ValueError(f"the model's input {_shape_text(source.shape)} is not used: the "
                             f"output is computed from another Input "
                             f"{_shape_text(strays[0].shape)}; pass that one as inputs")
        if strays:
            raise ValueError(f"the output depends on an Input {_shape_text(strays[0].shape)} "
                             "besides the model's input, so it cannot be computed from the "
                             "inputs: a Model takes one input; compute the output from it")
        if target is source:
            raise ValueError("the model has no layers: the output is the input itself")
        self._plan_calls(tensors)
        self._caches: dict = {}              # call number -> the forward cache of a shared layer
        self._build(source.shape, target.shape)

    def _plan_calls(self, tensors: list[SymbolicTensor]) -> None:
        """Number ``tensors`` (the input first, in creation order) and make the calls, the
        list of layers (each once) and the input shapes each layer is built for."""
        number = {id(t): k for k, t in enumerate(tensors)}
        self._calls: list[_Call] = []
        self._layer_inputs: list = []         # per layer: its per-sample input shape(s)
        index: dict = {}                      # id(layer) -> its position in self.layers
        for tensor in tensors[1:]:
            layer = tensor.layer
            shapes = [t.shape for t in tensor.inputs]
            shape = shapes if layer.multiple_inputs else shapes[0]
            if id(layer) not in index:
                self._check_layer(layer)
                index[id(layer)] = len(self.layers)
                self.layers.append(layer)
                self._layer_inputs.append(shape)
            elif self._layer_inputs[index[id(layer)]] != shape:
                first = self._layer_inputs[index[id(layer)]]
                raise ValueError(
                    f"{layer.name} is called on {_describe(first)} and on {_describe(shape)}: a "
                    "layer called more than once shares its weights and takes one input shape; "
                    "make a new layer for the other shape")
            self._calls.append(_Call(layer, tuple(number[id(t)] for t in tensor.inputs)))
        last = {}
        for k, call in enumerate(self._calls):
            for t in call.inputs:
                last[t] = k
            call.shared = sum(c.layer is call.layer for c in self._calls) > 1
        for t, k in last.items():
            self._calls[k].frees += (t,)

    def _build(self, input_shape: tuple, output_shape: tuple) -> None:
        rng = self.backend.rng(self.seed)
        with self.backend.activate(), unchanged_on_error(self.layers):
            for i, (layer, shape) in enumerate(zip(self.layers, self._layer_inputs)):
                try:
                    self._build_layer(layer, shape, rng)
                except ValueError as exc:
                    raise ValueError(f"layer {i} ({layer.name}): {exc}") from None
                # only the model's input (tensor 0) needs no gradient
                layer.need_input_grad = any(t != 0 for c in self._calls if c.layer is layer
                                            for t in c.inputs)
                layer.train(self.training)
        self._made(tuple(input_shape), tuple(output_shape))

    def to(self, device) -> "Model":
        """Move parameters, buffers and optimizer state to another device or backend (the
        forward caches are dropped: run forward again before backward)."""
        self._caches = {}
        return super().to(device)

    def require_built(self) -> None:
        """A Model is built when it is made: nothing to check."""

    def build_for(self, x) -> None:
        """A Model is built when it is made (its input's shape is known): nothing to do."""

    def __repr__(self) -> str:
        return (f"Model({len(self.layers)} layers, {len(self._calls)} calls, "
                f"device={self.backend.name}:{self.backend.device})")

    def summary_rows(self) -> list[tuple]:
        """The summary's rows: ``(call number, layer, per-sample output shape, inputs)`` for
        each call in order; ``inputs`` names the calls whose outputs it takes (``"input"``
        for the model's input)."""
        rows, shapes = [], [self.input_shape]
        for k, call in enumerate(self._calls):
            ins = [shapes[t] for t in call.inputs]
            shapes.append(call.layer.output_shape(ins if call.layer.multiple_inputs else ins[0]))
            names = ["input" if t == 0 else f"{t - 1} {self._calls[t - 1].layer.name}"
                     for t in call.inputs]
            rows.append((k, call.layer, shapes[-1], ", ".join(names)))
        return rows

    # --- forward / backward ---------------------------------------------------------------
    def _run(self, x, outputs: list | None = None):
        """Run every call on ``x`` in order; return the last output. With ``outputs``, append
        ``(layer, output)`` of each call to it."""
        if is_symbolic(x):
            raise TypeError("a Model is not called on symbolic tensors (models do not nest): "
                            "call its layers on the tensor instead, or build one Model of them")
        self.check_input(x)
        values = {0: x}
        for k, call in enumerate(self._calls):
            args = [values[t] for t in call.inputs]
            y = call.layer._forward(args if call.layer.multiple_inputs else args[0])
            if call.shared:
                self._caches[k] = call.layer._cache
            values[k + 1] = y
            for t in call.frees:
                del values[t]
            if outputs is not None:
                outputs.append((call.layer, y))
        self._forward_mode = "train" if self.training else "eval"
        return values[len(self._calls)]

    @on_device
    def forward(self, x):
        """Logits for a batch ``x`` already on the model's device, shape (N, *input_shape)."""
        return self._run(x)

    __call__ = forward

    @on_device
    def activations(self, x) -> list[tuple]:
        """``(layer, output)`` for each call in order, for a batch ``x`` on the model's device
        (``portacnn.viz`` draws them); run in the model's current mode."""
        outputs = []
        self._run(x, outputs)
        return outputs

    @on_device
    def backward(self, dlogits) -> None:
        """Back-propagate dL/dlogits through the calls in reverse order, filling each layer's
        ``grads``: a tensor read by several calls gets the sum of their gradients, and a layer
        called several times the sum of its calls' parameter gradients.

        Raises ``RuntimeError`` before any forward, or after a forward in eval mode (which
        keeps no caches)."""
        self._check_backward()
        grads = {len(self._calls): dlogits}
        earlier: dict = {}                     # id(layer) -> the grads of its later calls
        for k in range(len(self._calls) - 1, -1, -1):
            call = self._calls[k]
            layer = call.layer
            if call.shared:
                layer._cache = self._caches[k]
            dx = layer.backward(grads.pop(k + 1))
            if call.shared:
                for key, g in earlier.get(id(layer), {}).items():
                    layer.grads[key] = layer.grads[key] + g
                earlier[id(layer)] = dict(layer.grads)
            for t, d in zip(call.inputs, dx if layer.multiple_inputs else [dx]):
                if t != 0:
                    grads[t] = d if t not in grads else grads[t] + d

    # --- persistence ----------------------------------------------------------------------
    def architecture(self) -> dict:
        """The JSON-able description :func:`load` rebuilds the (untrained) model from: the
        layers, and the calls as ``{"layer": i, "inputs": [tensor, ...]}`` (tensor 0 is the
        input, ``k + 1`` the output of call ``k``; the last call's is the model's output)."""
        index = {id(layer): i for i, layer in enumerate(self.layers)}
        return {
            "class": "Model",
            "input_shape": list(self.input_shape),
            "dtype": self.dtype_name,
            "loss": self.loss_name,
            "seed": self.seed,
            "layers": self._layer_descriptions(),
            "calls": [{"layer": index[id(call.layer)], "inputs": list(call.inputs)}
                      for call in self._calls],
        }


def _describe(shape) -> str:
    """A per-sample shape, or a list of them, as ``(N, ...)`` text."""
    if shape and isinstance(shape[0], tuple):
        return " and ".join(map(_shape_text, shape))
    return _shape_text(shape)
