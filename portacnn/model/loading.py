"""Loading a saved model: :func:`load` a checkpoint, :func:`rebuild` from its description.

    >>> model = portacnn.load("lenet5.safetensors", device="cpu")   # weights and optimizer

The file format, the tensor names and the checks of the stored tensors live in
:mod:`portacnn.checkpoint`; this module turns the architecture description back into layers
and a :class:`~.sequential.Sequential` or a :class:`~.graph.Model` (whose calls it replays on
symbolic tensors). It first walks the description's layers through their
``output_shape`` / ``param_shapes`` / ``buffer_shapes``, which allocate nothing, and checks the
file's tensors against those shapes; only then does it build the model (allocating exactly as
much as the file holds) and fill it.
"""

from __future__ import annotations

from .. import checkpoint
from ..backends import get_backend
from ..checkpoint import CheckpointError
from ..layers import LAYERS, Input
from ..optim import get_optimizer
from .graph import Model
from .sequential import Sequential

__all__ = ["load", "rebuild"]

# A layer's input size along the first axis (channels / features): built at construction when
# given, so left out and compared with the size the walk infers instead.
_TOLD_SIZES = ("in_channels", "in_features", "num_features")

# What a malformed description raises on its way through the layers' constructors and checks.
_MALFORMED = (KeyError, TypeError, ValueError, AttributeError, OverflowError, RecursionError)


def _checked_header(arch: dict) -> tuple:
    """The description's per-sample input shape, checked, and its layers, made from their
    configurations, with the input sizes each was told (compared with the inferred ones by
    :func:`_told_sizes_fit`)."""
    input_shape = arch["input_shape"]
    if not (isinstance(input_shape, list) and input_shape
            and all(type(d) is int and d > 0 for d in input_shape)):
        raise ValueError(f"input_shape must be a list of positive ints, got {input_shape!r}")
    seed = arch.get("seed")
    if seed is not None and not (type(seed) is int and seed >= 0):
        raise ValueError(f"seed must be a non-negative int or null, got {seed!r}")
    if arch["dtype"] not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {arch['dtype']!r}")
    if not (isinstance(arch["layers"], list) and arch["layers"]):
        raise ValueError(f"layers must be a non-empty list, got {arch['layers']!r:.40}")
    layers, told = [], []
    for spec in arch["layers"]:
        if spec["type"] not in LAYERS:
            raise ValueError(f"unknown layer type {spec['type']!r}")
        config = dict(spec["config"])
        told.append({key: config.pop(key) for key in _TOLD_SIZES if key in config})
        layers.append(LAYERS[spec["type"]](**config))
    return tuple(input_shape), layers, told


def _told_sizes_fit(i: int, layer, sizes: dict, shape) -> None:
    """Raise unless each input size ``layer`` (number ``i``) was saved with is ``shape``'s."""
    for key, size in sizes.items():
        if size is not None and size != shape[0]:
            raise ValueError(f"layer {i} ({layer.name}) was saved with {key}={size!r} but "
                             f"its input has {shape[0]}")


def _shapes_of(i: int, layer, shape, params: dict, buffers: dict) -> tuple:
    """Add the shapes of layer ``i``'s parameters and buffers for per-sample input ``shape``
    to ``params`` / ``buffers`` (by name, ``"0.weight"``); return its output shape."""
    try:
        out = layer.output_shape(shape)          # validates the input shape first
        params.update({f"{i}.{k}": tuple(v) for k, v in layer.param_shapes(shape).items()})
        buffers.update({f"{i}.{k}": tuple(v) for k, v in layer.buffer_shapes(shape).items()})
    except ValueError as exc:
        raise ValueError(f"layer {i} ({layer.name}): {exc}") from None
    return out


def _plan_sequential(arch: dict, backend) -> tuple:
    input_shape, layers, told = _checked_header(arch)
    model = Sequential(layers, device=backend, dtype=arch["dtype"], seed=arch.get("seed"),
                       loss=arch["loss"])
    shape, params, buffers = input_shape, {}, {}
    for i, (layer, sizes) in enumerate(zip(layers, told)):
        _told_sizes_fit(i, layer, sizes, shape)
        shape = _shapes_of(i, layer, shape, params, buffers)
    return (lambda: model.build(input_shape)), params, buffers


def _plan_graph(arch: dict, backend) -> tuple:
    """The graph's calls replayed on symbolic tensors (which checks every shape and
    allocates nothing), and a function making the :class:`Model` of them."""
    input_shape, layers, told = _checked_header(arch)
    calls = arch["calls"]
    if not (isinstance(calls, list) and calls):
        raise ValueError(f"calls must be a non-empty list, got {calls!r:.40}")
    tensors, params, buffers = [Input(input_shape)], {}, {}
    for k, call in enumerate(calls):
        i, inputs = call["layer"], call["inputs"]
        if not (type(i) is int and 0 <= i < len(layers)):
            raise ValueError(f"call {k} names layer {i!r}, not one of the {len(layers)} layers")
        if not (isinstance(inputs, list) and inputs
                and all(type(t) is int and 0 <= t <= k for t in inputs)):
            raise ValueError(f"call {k} takes tensors {inputs!r}: each must be an earlier "
                             f"tensor, 0 to {k}")
        layer, args = layers[i], [tensors[t] for t in inputs]
        if not layer.multiple_inputs:
            if len(args) != 1:
                raise ValueError(f"call {k}: {layer.name} takes one tensor, not {len(args)}")
            _told_sizes_fit(i, layer, told[i], args[0].shape)
        shape = [t.shape for t in args] if layer.multiple_inputs else args[0].shape
        _shapes_of(i, layer, shape, params, buffers)
        tensors.append(layer(args if layer.multiple_inputs else args[0]))

    def make() -> Model:
        model = Model(tensors[0], tensors[-1], device=backend, dtype=arch["dtype"],
                      seed=arch.get("seed"), loss=arch["loss"])
        if model.layers != layers or model.architecture()["calls"] != calls:
            raise ValueError("the calls are not in an order the graph can be rebuilt in (each "
                             "call after its inputs, every layer called)")
        return model
    return make, params, buffers


def _plan(arch: dict, backend) -> tuple:
    """From :meth:`~.base.ModelBase.architecture`'s description: a function that makes the
    built model (fresh weights), and the shapes its parameters and buffers will have by name
    (``{"0.weight": (F, C, kh, kw), ...}``); nothing is allocated until the function is
    called. Raises one of ``_MALFORMED`` for a bad description."""
    kind = arch.get("class", "Sequential")
    if kind == "Sequential":
        return _plan_sequential(arch, backend)
    if kind == "Model":
        return _plan_graph(arch, backend)
    raise ValueError(f"unknown model class {kind!r}; choose Sequential or Model")


def rebuild(arch: dict, device=None):
    """A new model (:class:`Sequential` or :class:`Model`) from the description
    ``architecture()`` gives (fresh weights). Raises ``KeyError``, ``TypeError`` or
    ``ValueError`` (and the like) for a bad description."""
    make, _, _ = _plan(arch, get_backend(device))
    return make()


def _optimizer(path, settings):
    """The optimizer the description's ``optimizer`` settings describe (None for none), with
    its step count; its state is checked and set by :func:`load`."""
    if not settings:
        return None
    try:
        optimizer = get_optimizer(settings["config"])
        steps = settings["steps"]
        if not (type(steps) is int and steps >= 0):
            raise ValueError(f"steps must be a non-negative int, got {steps!r}")
    except _MALFORMED as exc:
        raise CheckpointError(f"{path}: the optimizer settings are corrupted ({exc})") from None
    optimizer.steps = steps
    return optimizer


def load(path, device=None):
    """Rebuild a model saved by ``save`` (a :class:`Sequential` or a :class:`Model`) on
    ``device`` (any backend; default ``$PORTACNN_DEVICE`` or ``"cpu"``), with its optimizer
    (``model.optimizer``) if saved.

    Every tensor is checked against the shape the description declares for it before the
    model is built, so a file allocates no more than it holds.

    Raises:
        CheckpointError: the file is missing, not a regular file, truncated, corrupted, from a
            newer format, its description is malformed, or its tensors (the optimizer's state
            included) do not match the architecture it describes.
    """
    desc, tensors = checkpoint.read(path)
    backend = get_backend(device)
    try:
        make, params, buffers = _plan(desc["model"], backend)
    except _MALFORMED as exc:
        raise CheckpointError(f"{path}: the architecture cannot be rebuilt: {exc}") from None
    optimizer = _optimizer(path, desc.get("optimizer"))
    dtype = desc["model"]["dtype"]
    checkpoint.check_tensors(path, tensors, {**params, **buffers}, dtype, optimizer is not None)
    state = {} if optimizer is None else checkpoint.optimizer_state(path, tensors, params, dtype,
                                                                    optimizer)
    # Everything checked: only now build the model (its sizes are the file's) and fill it.
    try:
        model = make()                               # a layer's own seed is drawn from here
    except _MALFORMED as exc:
        raise CheckpointError(f"{path}: the architecture cannot be rebuilt: {exc}") from None
    for slot in (*model.parameters(), *model.buffers()):
        slot.value = backend.asarray(checkpoint.layer_tensor(tensors, slot))
    if optimizer is not None:
        optimizer.state = {name: {key: backend.asarray(arr) for key, arr in held.items()}
                           for name, held in state.items()}
    model.optimizer = optimizer
    return model
