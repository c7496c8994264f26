"""Loading a saved model: :func:`load` a checkpoint, :func:`rebuild` from its description.

    >>> model = portacnn.load("lenet5.safetensors", device="cpu")   # weights and optimizer

The file format, the tensor names and the checks of the stored tensors live in
:mod:`portacnn.checkpoint`; this module turns the architecture description back into layers
and a :class:`~.sequential.Sequential`. It first walks the description's layers through their
``output_shape`` / ``param_shapes`` / ``buffer_shapes``, which allocate nothing, and checks the
file's tensors against those shapes; only then does it build the model (allocating exactly as
much as the file holds) and fill it.
"""

from __future__ import annotations

from .. import checkpoint
from ..backends import get_backend
from ..checkpoint import CheckpointError
from ..layers import LAYERS
from ..optim import get_optimizer
from .sequential import Sequential

__all__ = ["load", "rebuild"]

# A layer's input size along the first axis (channels / features): built at construction when
# given, so left out and compared with the size the walk infers instead.
_TOLD_SIZES = ("in_channels", "in_features", "num_features")

# What a malformed description raises on its way through the layers' constructors and checks.
_MALFORMED = (KeyError, TypeError, ValueError, AttributeError, OverflowError, RecursionError)


def _plan(arch: dict, device) -> tuple[Sequential, tuple, dict, dict]:
    """An unbuilt ``Sequential`` from :meth:`Sequential.architecture`'s description, its
    per-sample input shape, and the shapes its parameters and buffers will have by name
    (``{"0.weight": (F, C, kh, kw), ...}``): nothing is allocated. Raises one of
    ``_MALFORMED`` for a bad description."""
    input_shape = arch["input_shape"]
    if not (isinstance(input_shape, list) and input_shape
            and all(type(d) is int and d > 0 for d in input_shape)):
        raise ValueError(f"input_shape must be a list of positive ints, got {input_shape!r}")
    seed = arch.get("seed")
    if seed is not None and not (type(seed) is int and seed >= 0):
        raise ValueError(f"seed must be a non-negative int or null, got {seed!r}")
    if not (isinstance(arch["layers"], list) and arch["layers"]):
        raise ValueError(f"layers must be a non-empty list, got {arch['layers']!r:.40}")
    layers, told = [], []
    for spec in arch["layers"]:
        if spec["type"] not in LAYERS:
            raise ValueError(f"unknown layer type {spec['type']!r}")
        config = dict(spec["config"])
        told.append({key: config.pop(key) for key in _TOLD_SIZES if key in config})
        layers.append(LAYERS[spec["type"]](**config))
    model = Sequential(layers, device=device, dtype=arch["dtype"], seed=seed, loss=arch["loss"])

    shape, params, buffers = tuple(input_shape), {}, {}
    for i, (layer, sizes) in enumerate(zip(layers, told)):
        for key, size in sizes.items():
            if size is not None and size != shape[0]:
                raise ValueError(f"layer {i} ({layer.name}) was saved with {key}={size!r} but "
                                 f"its input has {shape[0]}")
        try:
            out = layer.output_shape(shape)          # validates the input shape first
            params.update({f"{i}.{k}": tuple(v) for k, v in layer.param_shapes(shape).items()})
            buffers.update({f"{i}.{k}": tuple(v) for k, v in layer.buffer_shapes(shape).items()})
        except ValueError as exc:
            raise ValueError(f"layer {i} ({layer.name}): {exc}") from None
        shape = out
    return model, tuple(input_shape), params, buffers


def rebuild(arch: dict, device=None) -> Sequential:
    """A new ``Sequential`` from :meth:`Sequential.architecture`'s description (fresh weights).
    Raises ``KeyError``, ``TypeError`` or ``ValueError`` (and the like) for a bad description."""
    model, input_shape, _, _ = _plan(arch, get_backend(device))
    return model.build(input_shape)


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


def load(path, device=None) -> Sequential:
    """Rebuild a model saved by :meth:`Sequential.save` on ``device`` (any backend; default
    ``$PORTACNN_DEVICE`` or ``"cpu"``), with its optimizer (``model.optimizer``) if saved.

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
        model, input_shape, params, buffers = _plan(desc["model"], backend)
    except _MALFORMED as exc:
        raise CheckpointError(f"{path}: the architecture cannot be rebuilt: {exc}") from None
    optimizer = _optimizer(path, desc.get("optimizer"))
    dtype = model.dtype_name
    checkpoint.check_tensors(path, tensors, {**params, **buffers}, dtype, optimizer is not None)
    state = {} if optimizer is None else checkpoint.optimizer_state(path, tensors, params, dtype,
                                                                    optimizer)
    # Everything checked: only now build the model (its sizes are the file's) and fill it.
    try:
        model.build(input_shape)                     # a layer's own seed is drawn from here
    except _MALFORMED as exc:
        raise CheckpointError(f"{path}: the architecture cannot be rebuilt: {exc}") from None
    for slot in (*model.parameters(), *model.buffers()):
        slot.value = backend.asarray(checkpoint.layer_tensor(tensors, slot))
    if optimizer is not None:
        optimizer.state = {name: {key: backend.asarray(arr) for key, arr in held.items()}
                           for name, held in state.items()}
    model.optimizer = optimizer
    return model
