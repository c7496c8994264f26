"""What the processes of a data-parallel job must agree on before they work together, and how
a difference is named.

Every :class:`~.data_parallel.DataParallel` call that starts collective work (building the
replicas, ``fit``, ``evaluate``, ``predict``) first exchanges its *settings*: a dict of values
that compare with ``==`` and print briefly (:func:`setting`). Anything that changes what the
processes compute, or the sequence of their collective calls, is in it: the model's
architecture and parameter shapes, epochs, batch size, shuffling, the seed, the optimizer's
configuration and state, and each data array's fingerprint (:func:`fingerprint`). A difference
raises the same :class:`~.mpi.DistributedError` on every process, naming the first setting
that differs (:func:`difference`), before any step: a job whose processes would wait for each
other in different calls, or train different replicas, ends within seconds instead.
"""

from __future__ import annotations

import hashlib
import numbers

from ..backends import to_numpy

__all__ = ["SAMPLE_ROWS", "difference", "fingerprint", "model_settings", "setting"]

SAMPLE_ROWS = 1024          # rows of a data array that its fingerprint hashes


def fingerprint(arr) -> dict:
    """Shape, dtype and a hash of up to :data:`SAMPLE_ROWS` evenly spaced rows of a data array
    (all rows of a smaller one): a few milliseconds for MNIST, and different for data of
    another length, dtype, source, order or normalisation."""
    rows = arr.shape[0] if arr.ndim else 1
    step = max(1, -(-rows // SAMPLE_ROWS))
    sample = to_numpy(arr[::step, ...] if arr.ndim else arr)
    return {"shape": tuple(int(n) for n in arr.shape), "dtype": str(sample.dtype),
            "rows_hash": hashlib.blake2b(sample.tobytes(), digest_size=8).hexdigest()}


def setting(value):
    """``value`` as the processes compare it: numbers, strings and None as they are; arrays by
    :func:`fingerprint`; an optimizer by its configuration, step count and the shapes of its
    state (the values are rank 0's: ``DataParallel.fit`` broadcasts them); tuples, lists and
    dicts item by item; any other object by its type's name (its ``repr`` may hold an
    address that differs between processes)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Number):
        return value.item() if hasattr(value, "item") else value
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return fingerprint(value)
    if hasattr(value, "get_config") and hasattr(value, "state"):       # an Optimizer
        return {"config": value.get_config(), "steps": value.steps,
                "state": {name: {slot: tuple(array.shape) for slot, array in slots.items()}
                          for name, slots in value.state.items()}}
    if isinstance(value, (tuple, list)):
        return [setting(item) for item in value]
    if isinstance(value, dict):
        return {str(key): setting(item) for key, item in value.items()}
    return f"<{type(value).__module__}.{type(value).__qualname__}>"


def model_settings(model) -> dict:
    """What every replica must share: the architecture (layers, their configuration, input
    shape, dtype, loss; not the seeds, since the parameters and the dropout generators' state
    are rank 0's) and the name, shape and dtype of every parameter and buffer."""
    architecture = {k: v for k, v in model.architecture().items() if k != "seed"}
    architecture["layers"] = [
        {**layer, "config": {k: v for k, v in layer["config"].items() if k != "seed"}}
        for layer in architecture["layers"]]
    return {"architecture": setting(architecture),
            "arrays": [(slot.name, tuple(slot.shape), str(slot.value.dtype))
                       for slot in (*model.parameters(), *model.buffers())]}


def difference(everyone: list[dict]) -> str | None:
    """The error message naming the first setting in which a process differs from rank 0,
    given every process's settings in rank order (a dict each, with the ``"call"`` it was
    made for), or None if all agree. Every process gets the same message."""
    call = everyone[0].get("call", "the call")
    for rank, theirs in enumerate(everyone[1:], start=1):
        found = _first_difference(everyone[0], theirs, "")
        if found is not None:
            where, ours, other = found
            return (f"the processes differ in {where} at {call}: {ours} on rank 0, {other} on "
                    f"rank {rank}. Every process must make the same calls with the same model, "
                    "settings and data (under mpiexec: the same command and arguments on every "
                    "process)")
    return None


_MISSING = "(nothing)"


def _first_difference(a, b, where: str):
    """``(path, a's value, b's value)`` of the first difference between two settings, walking
    dicts (in ``a``'s key order, then ``b``'s extra keys) and lists item by item."""
    if a == b:
        return None
    if isinstance(a, dict) and isinstance(b, dict):
        for key in [*a, *(k for k in b if k not in a)]:
            found = _first_difference(a.get(key, _MISSING), b.get(key, _MISSING),
                                      f"{where}.{key}" if where else key)
            if found is not None:
                return found
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            found = _first_difference(x, y, f"{where}[{i}]")
            if found is not None:
                return found
    return where or "the settings", _brief(a), _brief(b)


def _brief(value) -> str:
    text = value if value is _MISSING else repr(value)
    return text if len(text) <= 120 else text[:117] + "..."
