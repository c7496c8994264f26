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
  never leaves half a checkpoint; the file gets the mode the umask gives (0644 under 022). It
  refuses a target that is a directory or a special file (FIFO, device, socket), which the
  rename would replace (:func:`target_problem`), and removes the temporaries that interrupted
  saves of the same target left behind (:func:`remove_stale_temporaries`).
- :func:`read` checks the file before anything is built and raises :class:`CheckpointError`
  for a missing, truncated, corrupted, foreign or newer-format file, or a path that is not a
  regular file;
- :func:`check_tensors` and :func:`optimizer_state` check the tensors against the shapes the
  description declares (names, shapes, dtype), before the model is built: a file cannot make
  ``load`` allocate more than the tensors it holds.

:func:`folder_problem` says whether files can be created in a folder by creating one, which is
true for root only where it is true (``os.access`` says yes to root under ``/proc``); the
command line checks its output paths with it before training.
"""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import tempfile
import time
import zlib
from pathlib import Path

from .backends import to_numpy

__all__ = ["write", "write_atomic", "read", "model_tensors", "check_tensors", "layer_tensor",
           "optimizer_state", "target_problem", "folder_problem", "remove_stale_temporaries",
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
    to ``path`` atomically. Returns the path.

    Raises :class:`CheckpointError` before writing anything when ``path`` is a directory or a
    special file, or lies under a file (:func:`target_problem`)."""
    from safetensors.numpy import save as st_save

    desc = {"format": FORMAT, "format_version": FORMAT_VERSION, **description}
    return write_atomic(path, st_save(tensors, metadata={"portacnn": json.dumps(desc)}))


def write_atomic(path, blob: bytes) -> Path:
    """Write ``blob`` to ``path`` atomically (a temporary file in the same directory, then a
    rename: a crash never leaves half a file), with the mode the umask gives. Returns the path.

    Raises :class:`CheckpointError` before writing anything when ``path`` is a directory or a
    special file, or lies under a file (:func:`target_problem`)."""
    path = Path(path)
    problem = target_problem(path)
    if problem:
        raise CheckpointError(problem)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}-{_HOST}.",
                               suffix=".tmp")
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
    kind = _kind(path)
    if kind is None:
        raise CheckpointError(f"checkpoint {path} does not exist")
    if kind == _DIRECTORY:
        inside = sorted(path.glob("*.safetensors"))[:3]
        raise CheckpointError(f"{path} is a directory, not a checkpoint file: give the file's "
                              "path" + (f", such as {', '.join(map(str, inside))}" if inside
                                        else ""))
    if kind != _REGULAR:
        raise CheckpointError(f"{path} is {kind}, not a checkpoint file")
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
        desc = json.loads(meta["portacnn"])       # RecursionError: nested past the parser's depth
        version = int(desc["format_version"])
    except (ValueError, KeyError, TypeError, OverflowError, RecursionError) as exc:
        raise CheckpointError(f"{path}: the model description is corrupted ({exc})") from None
    if desc.get("format") != FORMAT or version > FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format {desc.get('format')} v{version}; "
                              f"this portacnn reads {FORMAT} v{FORMAT_VERSION} or older: upgrade "
                              "portacnn")
    return desc, tensors


# --- paths: what a save may replace, where files can be created -----------------------------
_REGULAR, _DIRECTORY = "a regular file", "a directory"
_KINDS = ((stat.S_ISREG, _REGULAR), (stat.S_ISDIR, _DIRECTORY), (stat.S_ISFIFO, "a FIFO"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"))


def _kind(path: Path) -> str | None:
    """What ``path`` is, following links (``"a regular file"``, ``"a FIFO"``...), or None when
    nothing is there."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    return next((kind for test, kind in _KINDS if test(mode)), "a special file")


def _nearest_existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists: the folder new ones will be made in."""
    while _kind(path) is None and path != path.parent:
        path = path.parent
    return path


def target_problem(path, example: str | None = "model.safetensors") -> str | None:
    """Why a file cannot be written to ``path`` (a checkpoint, a plot), found without writing
    anything, or None.

    A save renames a new file over ``path``: a directory cannot take it (the message suggests
    the file ``example`` in it, if given), and a FIFO, device or socket (or a link to one)
    would be replaced by a regular file. The folders above ``path`` are made where missing, so
    the nearest one that exists must be a directory."""
    path = Path(path)
    kind = _kind(path)
    if kind == _DIRECTORY and example:
        return f"{path} is a directory: give a file name such as {path / example}"
    if kind not in (None, _REGULAR):
        return (f"{path} is {kind}, not a regular file: writing replaces the file at that "
                "path, so give the path of a regular file or a new one")
    folder = _nearest_existing(path.parent)
    kind = _kind(folder)
    if kind != _DIRECTORY:
        return f"{folder} is {'a file' if kind == _REGULAR else kind}, not a directory"
    return None


def folder_problem(directory) -> str | None:
    """Why files cannot be created in ``directory`` (made if missing), or None.

    Checked by creating and removing a file in the nearest folder that exists: ``os.access``
    says yes to root everywhere, even under ``/proc`` or ``/sys`` or on a read-only mount."""
    folder = _nearest_existing(Path(directory))
    kind = _kind(folder)
    if kind != _DIRECTORY:
        return f"{folder} is {'a file' if kind == _REGULAR else kind}, not a directory"
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".portacnn-probe-")
    except OSError as exc:
        return f"cannot create files in {folder} ({exc.strerror or exc})"
    os.close(fd)
    os.unlink(probe)
    return None


# --- temporaries of interrupted saves --------------------------------------------------------
_HOST = f"{zlib.crc32(socket.gethostname().encode()):08x}"   # which machine wrote a temporary
STALE_AFTER_S = 3600


def remove_stale_temporaries(path) -> list[Path]:
    """Remove the temporaries that interrupted saves of ``path`` left beside it; return them.

    :func:`write` names its temporary ``.{name}.{pid}-{host}.{random}.tmp`` (``host`` a hash
    of the machine's name). One is stale, and removed, when its writer is gone: it was written
    on this machine by a process that no longer exists. Any temporary of a save of ``path``
    (also of the older form ``.{name}.{random}.tmp``) untouched for :data:`STALE_AFTER_S`
    seconds is stale too, whoever wrote it: a save writes its temporary in one go and renames
    it at once. The temporaries of live writers, of other machines (on a shared folder: their
    processes cannot be seen from here) and of other targets are kept, as are files whose
    names portacnn does not make."""
    path = Path(path)
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(?:(\d+)-([0-9a-f]{{8}})\.)?"
                         r"[a-z0-9_]{8}\.tmp")
    removed = []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        try:
            if not match or not entry.is_file(follow_symlinks=False):
                continue
            pid, host = match.groups()
            gone = pid is not None and host == _HOST and not _alive(int(pid))
            if gone or time.time() - entry.stat(follow_symlinks=False).st_mtime > STALE_AFTER_S:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:                    # gone meanwhile, or not ours to remove
            continue
    return removed


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (True when that cannot be told)."""
    if pid == os.getpid() or os.name != "posix":
        return True
    try:
        os.kill(pid, 0)                    # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except (OSError, OverflowError, ValueError):   # another user's process; no pid at all: age
        return True
    return True


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


def check_tensors(path, tensors: dict, shapes: dict, dtype: str, optimizer: bool) -> None:
    """Raise :class:`CheckpointError` unless ``tensors`` holds exactly one ``layers.{name}``
    array for each parameter or buffer in ``shapes`` (``{"0.weight": (F, C, kh, kw), ...}``,
    the shapes the description declares), of that shape and of ``dtype``, and nothing else
    but ``optimizer.*`` state, which only a file with ``optimizer`` settings may hold."""
    for name in sorted(tensors):
        if not name.startswith((LAYERS, OPTIMIZER)):
            raise CheckpointError(f"{path}: tensor {name!r} is neither a layer's tensor "
                                  "(layers.*) nor the optimizer's (optimizer.*): the file was "
                                  "not written by portacnn, or was edited")
        if name.startswith(OPTIMIZER) and not optimizer:
            raise CheckpointError(f"{path}: holds optimizer state {name} but no optimizer "
                                  "settings: the file was edited or is damaged")
    expected = {LAYERS + name: tuple(shape) for name, shape in shapes.items()}
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


def optimizer_state(path, tensors: dict, shapes: dict, dtype: str, optimizer) -> dict:
    """The optimizer's state in ``tensors``: ``{parameter name: {slot: host array}}``, each
    array checked against its parameter's declared shape (``shapes``: ``{"0.weight": (F, C,
    kh, kw), ...}``) and ``dtype``, and each slot against those ``optimizer`` keeps
    (:meth:`~portacnn.optim.Optimizer.slot_names`). Raises :class:`CheckpointError` naming the
    first tensor that names no parameter, no slot of the optimizer, or has another shape or
    dtype: one ``fit`` would otherwise give the parameter the slot's shape."""
    slots = optimizer.slot_names()
    state: dict = {}
    for key in sorted(tensors):
        if not key.startswith(OPTIMIZER):
            continue
        arr = tensors[key]
        name, _, slot = key[len(OPTIMIZER):].rpartition(".")
        if name not in shapes:
            raise CheckpointError(f"{path}: optimizer state {key} names no parameter")
        if slot not in slots:
            kept = ", ".join(repr(s) for s in slots) or "none"
            raise CheckpointError(f"{path}: {key}: {type(optimizer).__name__} keeps no slot "
                                  f"{slot!r} (it keeps {kept})")
        shape = tuple(shapes[name])
        if tuple(arr.shape) != shape or str(arr.dtype) != dtype:
            raise CheckpointError(f"{path}: {key} is {arr.dtype}{tuple(arr.shape)} but its "
                                  f"parameter needs {dtype}{shape}")
        state.setdefault(name, {})[slot] = arr
    return state
