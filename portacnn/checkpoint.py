"""The checkpoint file format: named host arrays and a JSON description in one safetensors file.

A checkpoint is one ``.safetensors`` file: every array as a named tensor (no pickle; it opens
in PyTorch and other frameworks) and, in the header's metadata under ``"portacnn"``, a JSON
description with a format version (the model's architecture and the optimizer's settings).

Tensor names (:func:`model_tensors`)::

    layers.{i}.{key}                  parameter or buffer ``key`` of layer i: layers.0.weight
                                      (F, C, kh, kw), layers.0.bias (F,), layers.1.running_mean
    optimizer.{i}.{key}.{slot}        the optimizer's state for that parameter:
                                      optimizer.0.weight.momentum

:meth:`portacnn.Sequential.save` and :func:`portacnn.load` use this module; it writes and
reads the file and checks what it holds:

- :func:`write` is atomic: a temporary file in the same directory, then a rename, so a crash
  never leaves half a checkpoint; the file gets the mode the umask gives (0644 under 022).
- :func:`read` checks the file before anything is built and raises :class:`CheckpointError`
  for a missing, truncated, corrupted, foreign or newer-format file;
- :func:`check_tensors` and :func:`optimizer_state` check the tensors against the model that
  the description rebuilt, before any of them is moved into it.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from .backends import to_numpy

__all__ = ["write", "read", "model_tensors", "check_tensors", "layer_tensor",
           "optimizer_state",
           "CheckpointError", "FORMAT", "FORMAT_VERSION"]

FORMAT = "portacnn"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupted, or does not match its description."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write(path, tensors: dict, description: dict) -> Path:
    """Write host arrays ``tensors`` (name -> NumPy array) and the JSON-able ``description``
    to ``path`` atomically. Returns the path."""
    from safetensors.numpy import save as st_save

    desc = {"format": FORMAT, "format_version": FORMAT_VERSION, **description}
    blob = st_save(tensors, metadata={"portacnn": json.dumps(desc)})
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory: give a file name such as "
                              f"{path / 'model.safetensors'}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(blob)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())      # mkstemp makes 0600; a saved model is shareable
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read(path) -> tuple[dict, dict]:
    """``(description, tensors)`` of a checkpoint written by :func:`write`; tensors are host
    NumPy arrays by name."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
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
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: the model description is corrupted ({exc})") from None
    if desc.get("format") != FORMAT or version > FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format {desc.get('format')} v{version}; "
                              f"this portacnn reads {FORMAT} v{FORMAT_VERSION} or older: upgrade "
                              "portacnn")
    return desc, tensors


# --- what a model's checkpoint holds ---------------------------------------------------------
LAYERS, OPTIMIZER = "layers.", "optimizer."


def model_tensors(parameters, buffers, optimizer=None) -> dict:
    """Every array of a model under its checkpoint name, copied to host NumPy: each
    :class:`~portacnn.layers.Parameter` and :class:`~portacnn.layers.Buffer` as
    ``layers.{name}``, and each slot of ``optimizer.state`` as ``optimizer.{name}.{slot}``."""
    tensors = {LAYERS + slot.name: to_numpy(slot.value) for slot in (*parameters, *buffers)}
    if optimizer is not None:
        for name, slots in optimizer.state.items():
            for slot, value in slots.items():
                tensors[f"{OPTIMIZER}{name}.{slot}"] = to_numpy(value)
    return tensors


def check_tensors(path, tensors: dict, slots, dtype: str) -> None:
    """Raise :class:`CheckpointError` unless ``tensors`` holds exactly one ``layers.{name}``
    array for each parameter or buffer in ``slots``, of its shape and of ``dtype``."""
    expected = {LAYERS + slot.name: slot.shape for slot in slots}
    stored = {name for name in tensors if name.startswith(LAYERS)}
    missing, extra = sorted(set(expected) - stored), sorted(stored - set(expected))
    if missing or extra:
        raise CheckpointError(f"{path}: tensors do not match the architecture "
                              f"(missing {missing[:4]}, unexpected {extra[:4]})")
    for name, shape in expected.items():
        arr = tensors[name]
        if tuple(arr.shape) != shape or str(arr.dtype) != dtype:
            raise CheckpointError(f"{path}: {name} is {arr.dtype}{tuple(arr.shape)} but the "
                                  f"architecture needs {dtype}{shape}")


def layer_tensor(tensors: dict, slot):
    """The stored host array of a parameter or buffer (checked by :func:`check_tensors`)."""
    return tensors[LAYERS + slot.name]


def optimizer_state(path, tensors: dict, parameter_names) -> dict:
    """The optimizer's state in ``tensors``: ``{parameter name: {slot: host array}}``. Raises
    :class:`CheckpointError` for state that names no parameter of the model."""
    names = set(parameter_names)
    state: dict = {}
    for key, arr in tensors.items():
        if key.startswith(OPTIMIZER):
            name, _, slot = key[len(OPTIMIZER):].rpartition(".")
            if name not in names:
                raise CheckpointError(f"{path}: optimizer state {key} names no parameter")
            state.setdefault(name, {})[slot] = arr
    return state
