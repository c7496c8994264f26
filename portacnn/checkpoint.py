"""The checkpoint file format: named host arrays and a JSON description in one safetensors file.

A checkpoint is one ``.safetensors`` file: every array as a named tensor (no pickle; it opens
in PyTorch and other frameworks) and, in the header's metadata under ``"portacnn"``, a JSON
description with a format version. What the names and the description hold is the model's
business (:meth:`portacnn.Sequential.save`, :func:`portacnn.load`); this module writes and
reads the file:

- :func:`write` is atomic: a temporary file in the same directory, then a rename, so a crash
  never leaves half a checkpoint; the file gets the mode the umask gives (0644 under 022).
- :func:`read` checks the file before anything is built and raises :class:`CheckpointError`
  for a missing, truncated, corrupted, foreign or newer-format file.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

__all__ = ["write", "read", "CheckpointError", "FORMAT", "FORMAT_VERSION"]

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
