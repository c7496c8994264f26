"""Moving data to the model's device: whole when it fits, else batch by batch.

Host data (NumPy) that fits the backend's ``device_data_limit`` (a GPU's) is moved to the
device whole, once per call (:func:`device_data`); each epoch is then shuffled there with one
``take`` per array (:func:`epoch_data`), so a batch is a slice. Otherwise each batch is
gathered on the host and moved by itself, once (:func:`batch`). Arrays already on the device
stay there. :func:`hold_out` sets validation rows apart (or checks the validation data given)
before the training data is moved.
"""

from __future__ import annotations

from ..backends import is_host_array
from ..scalars import is_real
from . import checks

__all__ = ["batch", "device_data", "epoch_data", "hold_out", "rows"]


def batch(model, arr, start, stop, order=None, dtype=None):
    """Rows ``order[start:stop]`` (or ``start:stop``) of ``arr``, moved once to the device."""
    if order is None:
        part = arr[start:stop, ...]
    elif is_host_array(arr):
        part = arr[order[start:stop], ...]                  # host gather, then one copy
    else:
        xp = model.backend.xp
        part = xp.take(arr, model.backend.asarray(order[start:stop]), axis=0)
    return model.backend.asarray(part, dtype=dtype)


def device_data(model, x, y=None):
    """``x`` (in the model's dtype) and ``y`` moved to the device whole, once, when both are
    host arrays that together fit ``backend.device_data_limit`` bytes; else as they are (then
    each batch is moved by itself). Returns ``(x, y)``."""
    backend = model.backend
    limit = backend.device_data_limit
    if not limit or not is_host_array(x) or (y is not None and not is_host_array(y)):
        return x, y
    itemsize = backend.xp.finfo(backend.dtype(model.dtype_name)).bits // 8
    if x.size * itemsize + (0 if y is None else y.nbytes) > limit:
        return x, y
    return (backend.asarray(x, dtype=model.dtype_name),
            None if y is None else backend.asarray(y))


def epoch_data(model, x, y, order):
    """The epoch's ``(x, y, order)``: arrays on the device are gathered into ``order`` once
    (one upload of the order, one ``take`` each), so every batch is a slice and ``order`` is
    returned as None; host arrays are returned as they are, each batch gathered on the host."""
    if order is None or is_host_array(x) or is_host_array(y):
        return x, y, order
    xp = model.backend.xp
    index = model.backend.asarray(order)
    return xp.take(x, index, axis=0), xp.take(y, index, axis=0), None


def rows(arr, start, stop):
    """Rows ``[start, stop)`` of ``arr``; ``arr`` itself when that is all of them."""
    return arr if (start, stop) == (0, arr.shape[0]) else arr[start:stop, ...]


def hold_out(model, x, y, validation_data, validation_split: float):
    """``(x, y, validation_data)``: the last ``validation_split`` of ``(x, y)`` held out (the
    rows were checked with ``x`` and ``y``), or ``validation_data`` checked and staged."""
    if validation_data is not None and validation_split:
        raise ValueError("give validation_data or validation_split, not both")
    if validation_split:
        if not (is_real(validation_split) and 0.0 < validation_split < 1.0):
            raise ValueError(f"validation_split must be in (0, 1), got {validation_split!r}")
        cut = x.shape[0] - int(round(x.shape[0] * validation_split))
        if cut <= 0 or cut >= x.shape[0]:
            raise ValueError("validation_split leaves no training or no validation samples")
        validation_data = (x[cut:, ...], y[cut:, ...])
        x, y = x[:cut, ...], y[:cut, ...]
    elif validation_data is not None:
        checks.check_arrays(model, *validation_data, what="validation x")
        checks.check_against_model(model, *validation_data, what="validation x")
    if validation_data is not None:
        validation_data = device_data(model, *validation_data)
    return x, y, validation_data
