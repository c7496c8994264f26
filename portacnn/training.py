"""The training loop: one step, ``fit``, ``evaluate`` and ``predict``, with History and progress.

These functions take any model with the container's interface (:class:`portacnn.Sequential`:
``layers``, ``backend``, ``forward`` / ``backward``, ``parameters()``, ``train()`` /
``eval()``); ``Sequential.fit`` and friends call them.

Inputs may be host NumPy arrays or arrays already on the model's device. Host data that fits
the backend's ``device_data_limit`` (a GPU's) is moved to the device whole, once, and each
epoch is shuffled there (one ``take``), so a batch is a slice; otherwise each batch is gathered
on the host and moved once. Everything here runs with the model's device current
(``Backend.activate``). The training loss and accuracy are accumulated on the device and
read back once per epoch, so a GPU is never made to wait inside the batch loop.

On backends with a ``train_chunk`` (the CPU), a training batch runs as chunks of at most that
many images whose gradients are summed before the one update: the same step up to float
rounding, with each chunk's working set in cache. Models whose layers couple the samples of a
batch or draw random numbers (batch norm, dropout) always run the batch whole.
"""

from __future__ import annotations

import math
import sys
import time

from . import kernels as K
from .backends import describe_array, is_host_array, on_device
from .optim import get_optimizer

__all__ = ["LOSSES", "History", "train_step", "fit", "evaluate", "predict"]

LOSSES = {"cross_entropy": K.softmax_cross_entropy, "mse": K.mse}


class History:
    """Per-epoch metrics from :func:`fit`.

    ``history.history`` maps ``"loss"``, ``"accuracy"``, ``"val_loss"``, ``"val_accuracy"``,
    ``"seconds"`` and ``"images_per_s"`` to one value per epoch (validation keys only when
    validation data was given). ``history["loss"]`` is a shortcut.
    """

    KEYS = ("loss", "accuracy", "val_loss", "val_accuracy", "seconds", "images_per_s")

    def __init__(self):
        self.history: dict[str, list] = {}

    def append(self, **values) -> None:
        for key, value in values.items():
            if value is not None:
                self.history.setdefault(key, []).append(value)

    def __getitem__(self, key):
        return self.history[key]

    @property
    def epochs(self) -> int:
        return len(self.history.get("loss", []))

    def __repr__(self) -> str:
        return f"History(epochs={self.epochs}, keys={list(self.history)})"


# --- one step ------------------------------------------------------------------------------
@on_device
def train_step(model, x, y, optimizer):
    """One forward, backward and update on a device batch ``x`` (N, *input_shape) with targets
    ``y``. Returns ``(loss, logits)`` as device arrays (no host synchronisation)."""
    model.check_input(x)
    loss_fn = LOSSES[model.loss_name]
    n = x.shape[0]
    chunk = model.backend.train_chunk
    if chunk is None or n <= chunk or not all(l.samples_independent for l in model.layers):
        logits = model.forward(x)
        loss, dlogits = loss_fn(logits, y)
        model.backward(dlogits)
    else:
        loss, logits = _chunked(model, loss_fn, x, y, -(-n // chunk))
    optimizer.step(model.parameters())
    return loss, logits


def _chunked(model, loss_fn, x, y, pieces: int):
    """Forward/backward in ``pieces`` near-equal chunks; each chunk's loss (a mean over its
    rows) is weighted by ``rows / n``, so the summed gradients and loss are the whole batch's."""
    xp = model.backend.xp
    n = x.shape[0]
    bounds = [n * i // pieces for i in range(pieces + 1)]
    params = model.parameters()
    totals, loss, outs = None, None, []
    for start, stop in zip(bounds[:-1], bounds[1:]):
        logits = model.forward(x[start:stop, ...])
        part, dlogits = loss_fn(logits, y[start:stop, ...])
        weight = (stop - start) / n
        model.backward(dlogits * weight)
        grads = [p.grad for p in params]
        totals = grads if totals is None else [t + g for t, g in zip(totals, grads)]
        loss = part * weight if loss is None else loss + part * weight
        outs.append(logits)
    for p, total in zip(params, totals):
        p.grad = total
    return loss, xp.concat(outs, axis=0)


# --- data plumbing -------------------------------------------------------------------------
def _check_data(model, x, y=None, what="x"):
    for arr, name in ((x, what), (y, "y")):
        if arr is None:
            continue
        if not (is_host_array(arr) or model.backend.owns(arr)):
            raise TypeError(
                f"{name} is a {describe_array(arr)} but the model is on {model.backend.name} "
                f"({model.backend.device}): pass a host NumPy array or move it with "
                "model.backend.asarray(x)"
            )
    if x.ndim == 0 or x.shape[0] == 0:
        raise ValueError(f"{what} has no samples (shape {tuple(x.shape)})")
    if tuple(x.shape[1:]) != model.input_shape:
        raise ValueError(f"{what} has shape {tuple(x.shape)} but the model expects "
                         f"(N, {', '.join(map(str, model.input_shape))})")
    if y is not None and y.shape[0] != x.shape[0]:
        raise ValueError(f"{what} has {x.shape[0]} samples but y has {y.shape[0]}")


def _batch(model, arr, start, stop, order=None, dtype=None):
    """Rows ``order[start:stop]`` (or ``start:stop``) of ``arr``, moved once to the device."""
    if order is None:
        part = arr[start:stop, ...]
    elif is_host_array(arr):
        part = arr[order[start:stop], ...]                  # host gather, then one copy
    else:
        xp = model.backend.xp
        part = xp.take(arr, model.backend.asarray(order[start:stop]), axis=0)
    return model.backend.asarray(part, dtype=dtype)


def _device_data(model, x, y=None):
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


def _epoch_data(model, x, y, order):
    """The epoch's ``(x, y, order)``: arrays on the device are gathered into ``order`` once
    (one upload of the order, one ``take`` each), so every batch is a slice and ``order`` is
    returned as None; host arrays are returned as they are, each batch gathered on the host."""
    if order is None or is_host_array(x) or is_host_array(y):
        return x, y, order
    xp = model.backend.xp
    index = model.backend.asarray(order)
    return xp.take(x, index, axis=0), xp.take(y, index, axis=0), None


def _hits(model, logits, yb):
    """Correct predictions in a batch as a 0-d device array (None for the MSE loss)."""
    if model.loss_name != "cross_entropy":
        return None
    xp = model.backend.xp
    labels = yb if yb.ndim == 1 else xp.argmax(yb, axis=1)
    return xp.sum(xp.astype(xp.argmax(logits, axis=1) == labels, logits.dtype))


def _positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


# --- fit / evaluate / predict --------------------------------------------------------------
@on_device
def fit(model, x, y, epochs: int = 1, batch_size: int = 32, optimizer="sgd", *,
        validation_data=None, validation_split: float = 0.0, shuffle: bool = True,
        seed: int | None = 0, verbose: int = 1, file=None) -> History:
    """Train ``model`` for ``epochs`` passes over ``(x, y)``; see :meth:`Sequential.fit`."""
    model.require_built()
    _positive_int(epochs, "epochs")
    _positive_int(batch_size, "batch_size")
    _check_data(model, x, y)
    if validation_data is not None and validation_split:
        raise ValueError("give validation_data or validation_split, not both")
    if validation_split:
        if not 0.0 < validation_split < 1.0:
            raise ValueError(f"validation_split must be in (0, 1), got {validation_split!r}")
        cut = x.shape[0] - int(round(x.shape[0] * validation_split))
        if cut <= 0 or cut >= x.shape[0]:
            raise ValueError("validation_split leaves no training or no validation samples")
        validation_data = (x[cut:, ...], y[cut:, ...])
        x, y = x[:cut, ...], y[:cut, ...]
    if validation_data is not None:
        _check_data(model, *validation_data, what="validation x")
        validation_data = _device_data(model, *validation_data)
    x, y = _device_data(model, x, y)
    model.optimizer = optimizer = get_optimizer(optimizer)
    backend = model.backend
    xp = backend.xp
    rng = backend.rng(seed)
    n = x.shape[0]
    steps = math.ceil(n / batch_size)
    history = History()
    dtype = backend.dtype(model.dtype_name)
    for epoch in range(1, epochs + 1):
        model.train()
        order = rng.permutation(n) if shuffle else None
        epoch_x, epoch_y, order = _epoch_data(model, x, y, order)
        total_loss = xp.zeros((), dtype=dtype, device=backend.device)
        total_hits = xp.zeros((), dtype=dtype, device=backend.device)
        bar = _progress(steps, f"epoch {epoch}/{epochs}", verbose == 1, file)
        t0 = time.perf_counter()
        with backend.activate():
            for i, start in enumerate(range(0, n, batch_size)):
                stop = min(start + batch_size, n)
                xb = _batch(model, epoch_x, start, stop, order, model.dtype_name)
                yb = _batch(model, epoch_y, start, stop, order)
                loss, logits = train_step(model, xb, yb, optimizer)
                total_loss = total_loss + loss * (stop - start)
                hits = _hits(model, logits, yb)
                if hits is not None:
                    total_hits = total_hits + hits
                if bar is not None:
                    bar.update(1)
                    # Reading a scalar stalls a GPU: show running figures only where it is free.
                    if backend.host_sync_is_free and (i % 20 == 19 or i == steps - 1):
                        bar.set_postfix(loss=f"{float(total_loss) / stop:.4f}",
                                        acc=f"{float(total_hits) / stop:.4f}", refresh=False)
            backend.synchronize()
        seconds = time.perf_counter() - t0
        epoch_loss = float(total_loss) / n          # one device->host read per epoch
        epoch_acc = float(total_hits) / n if model.loss_name == "cross_entropy" else None
        if bar is not None:
            bar.set_postfix(loss=f"{epoch_loss:.4f}", acc=f"{epoch_acc or 0:.4f}")
            bar.close()
        val_loss = val_acc = None
        if validation_data is not None:
            val_loss, val_acc = evaluate(model, *validation_data, batch_size=max(batch_size, 256))
        history.append(loss=epoch_loss, accuracy=epoch_acc, val_loss=val_loss,
                       val_accuracy=val_acc, seconds=seconds, images_per_s=n / seconds)
        if verbose:
            line = (f"epoch {epoch}/{epochs}: loss {epoch_loss:.4f}"
                    + (f", accuracy {epoch_acc:.4f}" if epoch_acc is not None else "")
                    + (f", val_loss {val_loss:.4f}, val_accuracy {val_acc:.4f}"
                       if val_loss is not None else "")
                    + f", {seconds:.2f} s, {n / seconds:,.0f} images/s")
            print(line, file=file or sys.stdout, flush=True)
    model.train()
    return history


def _inference(model, x, batch_size: int) -> list:
    """The model's outputs for ``x`` in eval mode, chunk by chunk (at most
    ``backend.infer_chunk`` images at once), in order."""
    _positive_int(batch_size, "batch_size")
    chunk = model.backend.infer_chunk
    step = batch_size if chunk is None else min(batch_size, chunk)
    was_training = model.training
    model.eval()
    try:
        with model.backend.activate():
            return [model.forward(_batch(model, x, start, min(start + step, x.shape[0]),
                                         dtype=model.dtype_name))
                    for start in range(0, x.shape[0], step)]
    finally:
        model.train(was_training)


@on_device
def evaluate(model, x, y, batch_size: int = 256):
    """Mean loss and accuracy of ``model`` on ``(x, y)``; see :meth:`Sequential.evaluate`."""
    model.require_built()
    _check_data(model, x, y)
    x, y = _device_data(model, x, y)
    loss_fn = LOSSES[model.loss_name]
    total_loss = total_hits = None
    start = 0
    for logits in _inference(model, x, batch_size):
        stop = start + logits.shape[0]
        yb = _batch(model, y, start, stop)
        loss = loss_fn(logits, yb)[0] * logits.shape[0]
        hits = _hits(model, logits, yb)
        total_loss = loss if total_loss is None else total_loss + loss
        total_hits = hits if total_hits is None else total_hits + hits
        start = stop
    n = x.shape[0]
    acc = float(total_hits) / n if model.loss_name == "cross_entropy" else None
    return float(total_loss) / n, acc


@on_device
def predict(model, x, batch_size: int = 256):
    """Class probabilities of ``model`` for ``x``; see :meth:`Sequential.predict`."""
    model.require_built()
    _check_data(model, x)
    x, _ = _device_data(model, x)
    outs = _inference(model, x, batch_size)
    if model.loss_name == "cross_entropy":
        outs = [K.softmax(out, axis=1) for out in outs]
    return model.backend.xp.concat(outs, axis=0)


def _progress(total, desc, enabled, file):
    if not enabled:
        return None
    from tqdm import tqdm

    file = file or sys.stderr
    tty = hasattr(file, "isatty") and file.isatty()
    # In a log (not a terminal) redraw rarely, so the file is not flooded with bars.
    return tqdm(total=total, desc=desc, unit="batch", leave=False, file=file,
                dynamic_ncols=True, mininterval=0.25 if tty else 5.0)
