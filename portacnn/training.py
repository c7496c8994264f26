"""The training loop: one step, ``fit``, ``evaluate`` and ``predict``, with History and progress.

These functions take any model with the container's interface (:class:`portacnn.Sequential`:
``layers``, ``backend``, ``forward`` / ``backward``, ``parameters()``, ``train()`` /
``eval()``); ``Sequential.fit`` and friends call them.

Inputs may be host NumPy arrays (each batch is moved to the model's device once) or arrays
already on the model's device. The training loss and accuracy are accumulated on the device and
read back once per epoch, so a GPU is never made to wait inside the batch loop.

On backends with a ``train_chunk`` (the CPU), a training batch runs as chunks of at most that
many images whose gradients are summed before the one update: the same step up to float
rounding, with each chunk's working set in cache. Models whose layers couple the samples of a
batch or draw random numbers (batch norm, dropout) always run the batch whole.

``fit``, ``evaluate`` and ``predict`` take ``replicas``: where the work of a batch is done. The
default, :data:`ONE_PROCESS`, is this process alone. :class:`portacnn.distributed.DataParallel`
passes itself: each process then computes its shard of every batch and the shards' gradients
and sums are added up across processes (see :class:`OneProcess` for the four methods).
"""

from __future__ import annotations

import math
import sys
import time

from . import kernels as K
from .backends import describe_array, is_host_array
from .optim import get_optimizer

__all__ = ["LOSSES", "History", "OneProcess", "ONE_PROCESS", "train_step", "accumulate_gradients",
           "fit", "evaluate", "predict"]

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


# --- where a batch is computed ---------------------------------------------------------------
class OneProcess:
    """The whole of every batch computed in this process: what ``fit`` / ``evaluate`` /
    ``predict`` do by default. :class:`portacnn.distributed.DataParallel` implements the same
    four methods across processes."""

    is_root = True                 # this process prints

    def shard(self, start: int, stop: int) -> tuple[int, int]:
        """The rows of the batch ``[start, stop)`` this process computes: all of them."""
        return start, stop

    def sum_gradients(self, parameters) -> None:
        """Add the other processes' shares of the batch gradient into each ``p.grad``: none."""

    def sum(self, values: list[float]) -> list[float]:
        """Each value summed over the processes: the values themselves."""
        return list(values)

    def gather(self, part):
        """The outputs of every process's shard, in row order: this process's."""
        return part


ONE_PROCESS = OneProcess()


# --- one step ------------------------------------------------------------------------------
def train_step(model, x, y, optimizer, *, batch_rows: int | None = None,
               sum_gradients=None):
    """One forward, backward and update on a device batch ``x`` (n, *input_shape) with targets
    ``y``. Returns ``(loss, logits)`` as device arrays (no host synchronisation).

    With data parallelism ``x`` is one shard of a batch of ``batch_rows`` rows and
    ``sum_gradients(parameters)`` adds the other shards' gradients before the update (see
    :func:`accumulate_gradients`); ``loss`` is then this shard's share of the batch loss.
    """
    model.check_input(x)
    loss, logits = accumulate_gradients(model, x, y, batch_rows)
    params = model.parameters()
    if sum_gradients is not None:
        sum_gradients(params)
    optimizer.step(params)
    return loss, logits


def accumulate_gradients(model, x, y, batch_rows: int | None = None):
    """Forward and backward of ``x`` (n, *input_shape), part of a batch of ``batch_rows`` rows
    (default n: the whole batch). Leaves in each parameter's ``grad`` this part's share of the
    gradient of the batch's mean loss: the part's mean loss weighted by ``n / batch_rows``, so
    the shares of the parts of a batch add up to the batch's gradient. Returns ``(loss, logits)``
    with ``loss`` weighted alike (a 0-d device array) and logits (n, classes).

    On backends with a ``train_chunk``, a part larger than it runs as chunks of near-equal size,
    each weighted by ``chunk rows / batch_rows`` the same way (unless a layer couples the
    samples). An empty part (a data-parallel shard of a batch smaller than the process count)
    still runs forward and backward, so dropout draws stay in step, and contributes zeros.
    """
    loss_fn = LOSSES[model.loss_name]
    xp = model.backend.xp
    n = x.shape[0]
    total = n if batch_rows is None else batch_rows
    chunk = model.backend.train_chunk
    pieces = 1
    if chunk is not None and n > chunk and all(l.samples_independent for l in model.layers):
        pieces = -(-n // chunk)
    bounds = [n * i // pieces for i in range(pieces + 1)]
    params = model.parameters() if pieces > 1 else None
    totals, loss, outs = None, None, []
    for start, stop in zip(bounds[:-1], bounds[1:]):
        part = x if pieces == 1 else x[start:stop, ...]
        logits = model.forward(part)
        if stop > start:
            part_loss, dlogits = loss_fn(logits, y if pieces == 1 else y[start:stop, ...])
            weight = (stop - start) / total
            if weight != 1.0:
                part_loss, dlogits = part_loss * weight, dlogits * weight
        else:                       # the mean over no rows is undefined: no loss, no gradient
            part_loss = xp.zeros((), dtype=logits.dtype, device=model.backend.device)
            dlogits = xp.zeros_like(logits)
        model.backward(dlogits)
        if pieces > 1:
            grads = [p.grad for p in params]
            totals = grads if totals is None else [t + g for t, g in zip(totals, grads)]
        loss = part_loss if loss is None else loss + part_loss
        outs.append(logits)
    if pieces > 1:
        for p, summed in zip(params, totals):
            p.grad = summed
    return loss, outs[0] if pieces == 1 else xp.concat(outs, axis=0)


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
def fit(model, x, y, epochs: int = 1, batch_size: int = 32, optimizer="sgd", *,
        validation_data=None, validation_split: float = 0.0, shuffle: bool = True,
        seed: int | None = 0, verbose: int = 1, file=None,
        replicas: OneProcess = ONE_PROCESS) -> History:
    """Train ``model`` for ``epochs`` passes over ``(x, y)``; see :meth:`Sequential.fit`.
    ``replicas``: where each batch is computed (see the module's docstring)."""
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
    model.optimizer = optimizer = get_optimizer(optimizer)
    if not replicas.is_root:
        verbose = 0                             # one process prints
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
        total_loss = xp.zeros((), dtype=dtype, device=backend.device)
        total_hits = xp.zeros((), dtype=dtype, device=backend.device)
        seen = 0                                # rows computed here (all, in one process)
        bar = _progress(steps, f"epoch {epoch}/{epochs}", verbose == 1, file)
        t0 = time.perf_counter()
        with backend.activate():
            for i, start in enumerate(range(0, n, batch_size)):
                stop = min(start + batch_size, n)
                lo, hi = replicas.shard(start, stop)
                xb = _batch(model, x, lo, hi, order, model.dtype_name)
                yb = _batch(model, y, lo, hi, order)
                loss, logits = train_step(model, xb, yb, optimizer, batch_rows=stop - start,
                                          sum_gradients=replicas.sum_gradients)
                seen += hi - lo
                total_loss = total_loss + loss * (stop - start)
                hits = _hits(model, logits, yb)
                if hits is not None:
                    total_hits = total_hits + hits
                if bar is not None:
                    bar.update(1)
                    # Reading a scalar stalls a GPU: show running figures only where it is free.
                    if backend.host_sync_is_free and (i % 20 == 19 or i == steps - 1):
                        bar.set_postfix(loss=f"{float(total_loss) / max(seen, 1):.4f}",
                                        acc=f"{float(total_hits) / max(seen, 1):.4f}",
                                        refresh=False)
            backend.synchronize()
        seconds = time.perf_counter() - t0
        # one device->host read per epoch
        loss_sum, hits_sum = replicas.sum([float(total_loss), float(total_hits)])
        epoch_loss = loss_sum / n
        epoch_acc = hits_sum / n if model.loss_name == "cross_entropy" else None
        if bar is not None:
            bar.set_postfix(loss=f"{epoch_loss:.4f}", acc=f"{epoch_acc or 0:.4f}")
            bar.close()
        val_loss = val_acc = None
        if validation_data is not None:
            val_loss, val_acc = evaluate(model, *validation_data, batch_size=max(batch_size, 256),
                                         replicas=replicas)
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


def evaluate(model, x, y, batch_size: int = 256, *, replicas: OneProcess = ONE_PROCESS):
    """Mean loss and accuracy of ``model`` on ``(x, y)``; see :meth:`Sequential.evaluate`.
    With ``replicas`` each process evaluates its shard of the rows and the sums are added."""
    model.require_built()
    _check_data(model, x, y)
    loss_fn = LOSSES[model.loss_name]
    total_loss = total_hits = None
    start, end = replicas.shard(0, x.shape[0])
    for logits in _inference(model, _rows(x, start, end), batch_size):
        stop = start + logits.shape[0]
        yb = _batch(model, y, start, stop)
        loss = loss_fn(logits, yb)[0] * logits.shape[0]
        hits = _hits(model, logits, yb)
        total_loss = loss if total_loss is None else total_loss + loss
        total_hits = hits if total_hits is None else total_hits + hits
        start = stop
    n = x.shape[0]
    loss_sum, hits_sum = replicas.sum([0.0 if t is None else float(t)
                                       for t in (total_loss, total_hits)])
    acc = hits_sum / n if model.loss_name == "cross_entropy" else None
    return loss_sum / n, acc


def predict(model, x, batch_size: int = 256, *, replicas: OneProcess = ONE_PROCESS):
    """Class probabilities of ``model`` for ``x``; see :meth:`Sequential.predict`. With
    ``replicas`` each process predicts its shard of the rows and every process gets all."""
    model.require_built()
    _check_data(model, x)
    start, end = replicas.shard(0, x.shape[0])
    outs = _inference(model, _rows(x, start, end), batch_size)
    if model.loss_name == "cross_entropy":
        outs = [K.softmax(out, axis=1) for out in outs]
    if not outs:                                # an empty shard
        backend = model.backend
        return replicas.gather(backend.xp.zeros((0, *model.output_shape),
                                                dtype=backend.dtype(model.dtype_name),
                                                device=backend.device))
    return replicas.gather(model.backend.xp.concat(outs, axis=0))


def _rows(arr, start, stop):
    """Rows ``[start, stop)`` of ``arr``; ``arr`` itself when that is all of them."""
    return arr if (start, stop) == (0, arr.shape[0]) else arr[start:stop, ...]


def _progress(total, desc, enabled, file):
    if not enabled:
        return None
    from tqdm import tqdm

    file = file or sys.stderr
    tty = hasattr(file, "isatty") and file.isatty()
    # In a log (not a terminal) redraw rarely, so the file is not flooded with bars.
    return tqdm(total=total, desc=desc, unit="batch", leave=False, file=file,
                dynamic_ncols=True, mininterval=0.25 if tty else 5.0)
