"""Loading a saved model: :func:`load` a checkpoint, :func:`rebuild` from its description.

    >>> model = portacnn.load("lenet5.safetensors", device="cpu")   # weights and optimizer

The file format, the tensor names and the checks of the stored tensors live in
:mod:`portacnn.checkpoint`; this module turns the architecture description back into layers
and a :class:`~.sequential.Sequential`, and fills it only once everything has been checked.
"""

from __future__ import annotations

from .. import checkpoint
from ..backends import get_backend
from ..checkpoint import CheckpointError
from ..layers import LAYERS
from ..optim import get_optimizer
from .sequential import Sequential

__all__ = ["load", "rebuild"]

_BUILD_ARGS = ("in_channels", "in_features")   # inferred again from input_shape on load


def rebuild(arch: dict, device=None) -> Sequential:
    """A new ``Sequential`` from :meth:`Sequential.architecture`'s description (fresh weights).
    Raises ``KeyError``, ``TypeError`` or ``ValueError`` for a bad description."""
    layers = []
    for spec in arch["layers"]:
        cls = LAYERS[spec["type"]]
        cfg = {k: v for k, v in spec["config"].items() if k not in _BUILD_ARGS}
        layers.append(cls(**cfg))
    return Sequential(layers, input_shape=arch["input_shape"], device=device,
                      dtype=arch["dtype"], seed=arch.get("seed"), loss=arch["loss"])


def load(path, device=None) -> Sequential:
    """Rebuild a model saved by :meth:`Sequential.save` on ``device`` (any backend; default
    ``$PORTACNN_DEVICE`` or ``"cpu"``), with its optimizer (``model.optimizer``) if saved.

    Raises:
        CheckpointError: the file is missing, truncated, corrupted, from a newer format, or its
            tensors do not match the architecture it describes.
    """
    desc, tensors = checkpoint.read(path)
    backend = get_backend(device)
    try:
        arch = desc["model"]
        model = rebuild(arch, backend)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: the architecture cannot be rebuilt ({exc})") from None

    slots = (*model.parameters(), *model.buffers())
    checkpoint.check_tensors(path, tensors, slots, arch["dtype"])
    optimizer = None
    if desc.get("optimizer"):
        try:
            optimizer = get_optimizer(desc["optimizer"]["config"])
            optimizer.steps = int(desc["optimizer"]["steps"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: the optimizer settings are corrupted ({exc})") from None
        state = checkpoint.optimizer_state(path, tensors, [p.name for p in model.parameters()])
        optimizer.state = {name: {key: backend.asarray(arr) for key, arr in held.items()}
                           for name, held in state.items()}
    # Everything checked: only now fill the (new) model.
    for slot in slots:
        slot.value = backend.asarray(checkpoint.layer_tensor(tensors, slot))
    model.optimizer = optimizer
    return model
