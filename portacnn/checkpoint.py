"""Checkpoints: weights, buffers and optimizer state in the safetensors format.

A checkpoint is one ``.safetensors`` file: every array as a named tensor (no pickle; it opens
in PyTorch and other frameworks) and, in the header's metadata, a JSON description of the
architecture, dtype, loss and optimizer settings with a format version. Tensor names:

    layers.{i}.{weight|bias|<buffer>}        e.g. layers.0.weight   (out, in, kh, kw)
    optimizer.{i}.{param}.{slot}             e.g. optimizer.0.weight.momentum

Writes are atomic (a temporary file in the same directory, then a rename), and ``load`` checks
everything before it returns a model, so a bad file gives a :class:`CheckpointError`, never a
half-loaded model.

    >>> model.save("lenet.safetensors")                 # trained on the GPU...
    >>> model = portacnn.load("lenet.safetensors", device="cpu")   # ...predicts on the CPU
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from .layers import LAYERS
from .optim import get_optimizer
from .runtime import get_backend, to_numpy

__all__ = ["save", "load", "CheckpointError", "FORMAT_VERSION"]

FORMAT = "portacnn"
FORMAT_VERSION = 1
_BUILD_ARGS = ("in_channels", "in_features")   # inferred again from input_shape on load


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupted, or does not match its description."""


def architecture(model) -> dict:
    """The JSON-able description :func:`rebuild` makes the same (untrained) model from."""
    return {
        "class": "Sequential",
        "input_shape": list(model.input_shape),
        "dtype": model.dtype_name,
        "loss": model.loss_name,
        "seed": model.seed,
        "layers": [{"type": type(layer).__name__, "config": layer.get_config()}
                   for layer in model.layers],
    }


def rebuilds_exactly(model) -> bool:
    """True if every layer is a built-in one, so :func:`rebuild` gives the same network."""
    return all(LAYERS.get(type(layer).__name__) is type(layer) for layer in model.layers)


def rebuild(arch: dict, backend):
    """A new ``Sequential`` on ``backend`` from :func:`architecture`'s description (fresh
    weights). Raises ``KeyError``, ``TypeError`` or ``ValueError`` for a bad description."""
    from .model import Sequential

    layers = []
    for spec in arch["layers"]:
        cls = LAYERS[spec["type"]]
        cfg = {k: v for k, v in spec["config"].items() if k not in _BUILD_ARGS}
        layers.append(cls(**cfg))
    return Sequential(layers, input_shape=arch["input_shape"], device=backend,
                      dtype=arch["dtype"], seed=arch.get("seed"), loss=arch["loss"])


def _describe(model, include_optimizer: bool) -> dict:
    opt = model.optimizer if include_optimizer else None
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": architecture(model),
        "optimizer": None if opt is None else {"config": opt.get_config(), "steps": opt.steps},
    }


def save(model, path, *, include_optimizer: bool = True) -> Path:
    """Write ``model`` (and its optimizer's state) to ``path`` atomically. Returns the path."""
    from safetensors.numpy import save as st_save

    model._require_built()
    tensors = {}
    for i, layer in enumerate(model.layers):
        for store in (layer.params, layer.buffers):
            for key, value in store.items():
                tensors[f"layers.{i}.{key}"] = to_numpy(value)
    if include_optimizer and model.optimizer is not None:
        for pname, slots in model.optimizer.state.items():
            for slot, value in slots.items():
                tensors[f"optimizer.{pname}.{slot}"] = to_numpy(value)
    meta = {"portacnn": json.dumps(_describe(model, include_optimizer))}
    blob = st_save(tensors, metadata=meta)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(blob)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _read(path: Path):
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="np") as fh:
            meta = fh.metadata() or {}
            tensors = {key: fh.get_tensor(key) for key in fh.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file (truncated or "
                              f"corrupted?): {exc}") from None
    if "portacnn" not in meta:
        raise CheckpointError(f"{path} is a safetensors file but not a portacnn checkpoint "
                              "(no 'portacnn' description in its metadata)")
    try:
        desc = json.loads(meta["portacnn"])
        version = int(desc["format_version"])
        arch = desc["model"]
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: the model description is corrupted ({exc})") from None
    if desc.get("format") != FORMAT or version > FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format {desc.get('format')} v{version}; "
                              f"this portacnn reads {FORMAT} v{FORMAT_VERSION} or older: upgrade "
                              "portacnn")
    return desc, arch, tensors


def load(path, device=None):
    """Rebuild a model saved by :func:`save` on ``device`` (any backend; default
    ``$PORTACNN_DEVICE`` or ``"cpu"``), with its optimizer (``model.optimizer``) if saved.

    Raises:
        CheckpointError: the file is missing, truncated, corrupted, from a newer format, or its
            tensors do not match the architecture it describes.
    """
    path = Path(path)
    desc, arch, tensors = _read(path)
    backend = get_backend(device)
    try:
        model = rebuild(arch, backend)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: the architecture cannot be rebuilt ({exc})") from None

    expected = {}
    for i, layer in enumerate(model.layers):
        for store in (layer.params, layer.buffers):
            for key, value in store.items():
                expected[f"layers.{i}.{key}"] = (store, key, tuple(value.shape))
    missing = sorted(set(expected) - {k for k in tensors if k.startswith("layers.")})
    extra = sorted(k for k in tensors if k.startswith("layers.") and k not in expected)
    if missing or extra:
        raise CheckpointError(f"{path}: tensors do not match the architecture "
                              f"(missing {missing[:4]}, unexpected {extra[:4]})")
    for name, (_, _, shape) in expected.items():
        arr = tensors[name]
        if tuple(arr.shape) != shape or str(arr.dtype) != arch["dtype"]:
            raise CheckpointError(f"{path}: {name} is {arr.dtype}{tuple(arr.shape)} but the "
                                  f"architecture needs {arch['dtype']}{shape}")
    optimizer = None
    if desc.get("optimizer"):
        try:
            optimizer = get_optimizer(desc["optimizer"]["config"])
            optimizer.steps = int(desc["optimizer"]["steps"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: the optimizer settings are corrupted ({exc})") from None
        params = {name for name, *_ in model.parameters()}
        for key, arr in tensors.items():
            if key.startswith("optimizer."):
                pname, _, slot = key[len("optimizer."):].rpartition(".")
                if pname not in params:
                    raise CheckpointError(f"{path}: optimizer state {key} names no parameter")
                optimizer.state.setdefault(pname, {})[slot] = backend.asarray(arr)
    # Everything checked: only now fill the (new) model.
    for name, (store, key, _) in expected.items():
        store[key] = backend.asarray(tensors[name])
    model.optimizer = optimizer
    return model
