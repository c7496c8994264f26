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

The data are checked once per call, before any training: labels (integer dtype, range
``[0, classes)``, shape; one-hot rows), and NaN or infinity in the inputs (one reduction over
``x``). A loss that turns NaN or infinite stops ``fit`` at the end of that epoch at the latest.

Where the backend's kernel set has a ``train_chunk`` (the CPU's), a training batch runs as
chunks of at most that many images whose gradients are summed before the one update: the same step up to float
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
import warnings

from .backends import describe_array, is_host_array, namespace, on_device
from .optim import SGD, get_optimizer

__all__ = ["LOSSES", "History", "OneProcess", "ONE_PROCESS", "train_step", "accumulate_gradients",
           "fit", "evaluate", "predict"]

LOSSES = ("cross_entropy", "mse")       # the model's ``loss`` names one of these


def _loss_kernel(model):
    """The loss kernel of ``model.loss_name`` in the backend's set: ``(logits, targets) ->
    (mean loss, dL/dlogits)``."""
    kernels = model.backend.kernels
    return kernels.softmax_cross_entropy if model.loss_name == "cross_entropy" else kernels.mse


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
@on_device
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

    Where the backend's kernel set has a ``train_chunk``, a part larger than it runs as chunks
    of near-equal size,
    each weighted by ``chunk rows / batch_rows`` the same way (unless a layer couples the
    samples). An empty part (a data-parallel shard of a batch smaller than the process count)
    still runs forward and backward, so dropout draws stay in step, and contributes zeros.
    """
    loss_fn = _loss_kernel(model)
    xp = model.backend.xp
    n = x.shape[0]
    total = n if batch_rows is None else batch_rows
    chunk = model.backend.kernels.train_chunk
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
def _check_data(model, x, y=None, what="x", values=True):
    """Check ``x`` (and ``y``) at the boundary of fit / evaluate / predict, building the model
    from ``x``'s per-sample shape if it is not built yet. ``values``: also refuse NaN or
    infinity in ``x`` (and in MSE targets). Labels are always checked."""
    y_what = what[:-1] + "y"                            # "x" -> "y", "validation x" -> ...
    for arr, name in ((x, what), (y, y_what)):
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
    model.build_for(x)
    if tuple(x.shape[1:]) != model.input_shape:
        raise ValueError(f"{what} has shape {tuple(x.shape)} but the model expects "
                         f"(N, {', '.join(map(str, model.input_shape))})")
    if y is not None and (y.ndim == 0 or y.shape[0] != x.shape[0]):
        raise ValueError(f"{what} has {x.shape[0]} samples but {y_what} has "
                         f"{y.shape[0] if y.ndim else 'none (it is a scalar)'}")
    if values:
        _check_finite(x, what)
    if y is not None:
        _check_targets(model, y, y_what, values)


def _check_finite(x, what):
    """Raise ``ValueError`` naming the first sample of ``x`` that holds NaN or infinity. One
    reduction and one read where ``x`` lives (host or device); the search runs only on error."""
    xp = namespace(x)
    if not xp.isdtype(x.dtype, "real floating"):
        return                                          # integer images cannot be NaN
    finite = xp.isfinite(x)
    if bool(xp.all(finite)):
        return
    per_sample = xp.all(xp.reshape(finite, (x.shape[0], -1)), axis=1)
    bad = xp.nonzero(~per_sample)[0]
    raise ValueError(
        f"{what}[{int(bad[0])}] holds NaN or infinity ({bad.shape[0]} of {x.shape[0]} samples "
        "do): training on it would make every weight NaN; drop or repair those samples first, "
        "e.g. keep = np.isfinite(x).reshape(len(x), -1).all(axis=1); x, y = x[keep], y[keep]")


def _check_targets(model, y, what, values=True):
    """Raise unless ``y`` fits the model's loss: for cross-entropy (N,) integer labels in
    ``[0, classes)`` or (N, classes) rows that are >= 0 and sum to 1 (one-hot or
    probabilities); for MSE, targets of the output's per-sample shape. The first bad sample
    is named."""
    out = tuple(model.output_shape)
    if model.loss_name != "cross_entropy":
        if tuple(y.shape[1:]) != out:
            raise ValueError(f"{what} has shape {tuple(y.shape)} but the model outputs "
                             f"(N, {', '.join(map(str, out))}): {model.loss_name} targets "
                             "have the output's shape")
        if values:
            _check_finite(y, what)
        return
    if len(out) != 1:
        raise ValueError(f"cross-entropy needs logits of shape (N, classes) but the model "
                         f"outputs (N, {', '.join(map(str, out))}): end it with Flatten() "
                         "and Dense(classes)")
    k = out[0]
    xp = namespace(y)
    if y.ndim == 1:
        if not xp.isdtype(y.dtype, "integral"):
            raise TypeError(
                f"{what} holds {y.dtype} labels but class labels are integers in [0, {k}): "
                "convert them, e.g. y.astype(int) for whole numbers stored as floats, or "
                "classes, y = np.unique(y, return_inverse=True) for names")
        bad = (y < 0) | (y >= k)
        if bool(xp.any(bad)):
            i = int(xp.nonzero(bad)[0][0])
            raise ValueError(
                f"{what}[{i}] is {int(y[i])} but the model has {k} classes: labels must be "
                f"integers in [0, {k}) (give the last Dense layer as many outputs as there are "
                "classes, or map the labels onto 0..classes-1)")
        return
    if y.ndim != 2 or y.shape[1] != k:
        raise ValueError(f"{what} has shape {tuple(y.shape)}: labels are (N,) integers in "
                         f"[0, {k}) or (N, {k}) one-hot rows"
                         + (" (flatten a column of labels with y.reshape(-1))"
                            if y.ndim == 2 and y.shape[1] == 1 else ""))
    if not (xp.isdtype(y.dtype, "real floating") or xp.isdtype(y.dtype, "integral")):
        raise TypeError(f"{what} holds {y.dtype} one-hot rows; give numbers (0 and 1)")
    rows = xp.astype(y, xp.float32) if xp.isdtype(y.dtype, "integral") else y
    ok = (xp.all(rows >= 0, axis=1) & xp.all(xp.isfinite(rows), axis=1)
          & (xp.abs(xp.sum(rows, axis=1) - 1) <= 1e-3))
    if not bool(xp.all(ok)):
        i = int(xp.nonzero(~ok)[0][0])
        raise ValueError(
            f"{what}[{i}] is not a one-hot row (its entries must be >= 0 and sum to 1, got "
            f"sum {float(xp.sum(rows[i, ...])):g}): give (N, {k}) one-hot rows or (N,) integer "
            "labels")


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
def fit(model, x, y, epochs: int = 1, batch_size: int = 32, optimizer=None, *,
        validation_data=None, validation_split: float = 0.0, shuffle: bool = True,
        seed: int | None = 0, verbose: int = 1, file=None,
        replicas: OneProcess = ONE_PROCESS) -> History:
    """Train ``model`` for ``epochs`` passes over ``(x, y)``; see :meth:`Sequential.fit`.
    ``replicas``: where each batch is computed (see the module's docstring)."""
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
        validation_data = (x[cut:, ...], y[cut:, ...])      # checked with x and y above
        x, y = x[:cut, ...], y[:cut, ...]
    elif validation_data is not None:
        _check_data(model, *validation_data, what="validation x")
    if validation_data is not None:
        validation_data = _device_data(model, *validation_data)
    x, y = _device_data(model, x, y)
    if optimizer is None:     # keep the model's (from load or an earlier fit), else plain SGD
        optimizer = model.optimizer if model.optimizer is not None else SGD(0.01)
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
    accuracy = model.loss_name == "cross_entropy"
    warned = False
    for epoch in range(1, epochs + 1):
        model.train()
        order = rng.permutation(n) if shuffle else None
        epoch_x, epoch_y, order = _epoch_data(model, x, y, order)
        total_loss = xp.zeros((), dtype=dtype, device=backend.device)
        total_hits = xp.zeros((), dtype=dtype, device=backend.device)
        seen = 0                                # rows computed here (all, in one process)
        progress = _Progress(steps, f"epoch {epoch}/{epochs}", file) if verbose == 1 else None
        diverged = _Divergence(epoch, epochs, optimizer, batch_size, progress)
        t0 = time.perf_counter()
        with backend.activate():
            for i, start in enumerate(range(0, n, batch_size)):
                stop = min(start + batch_size, n)
                lo, hi = replicas.shard(start, stop)
                xb = _batch(model, epoch_x, lo, hi, order, model.dtype_name)
                yb = _batch(model, epoch_y, lo, hi, order)
                loss, logits = train_step(model, xb, yb, optimizer, batch_rows=stop - start,
                                          sum_gradients=replicas.sum_gradients)
                seen += hi - lo
                total_loss = total_loss + loss * (stop - start)
                hits = _hits(model, logits, yb)
                if hits is not None:
                    total_hits = total_hits + hits
                if progress is not None and progress.due(i):
                    # Reading a scalar stalls a GPU: show running figures only where it is free.
                    figures = ""
                    if backend.host_sync_is_free:
                        running = float(total_loss) / max(seen, 1)
                        diverged.check(running)
                        figures = f"loss {running:.4f}" + (
                            f", accuracy {float(total_hits) / max(seen, 1):.4f}"
                            if accuracy else "")
                    progress.show(i, figures)
            backend.synchronize()
        seconds = time.perf_counter() - t0
        # one device->host read per epoch
        loss_sum, hits_sum = replicas.sum([float(total_loss), float(total_hits)])
        epoch_loss = loss_sum / n
        diverged.check(epoch_loss)
        epoch_acc = hits_sum / n if accuracy else None
        if progress is not None:
            progress.close()
        # A uniform guess scores ln(classes); three times that after an epoch is divergence.
        guess = math.log(max(model.output_shape[0], 2))
        if accuracy and not warned and epoch_loss > 3 * guess and replicas.is_root:
            warnings.warn(diverged.message(
                f"training is diverging: the loss is {epoch_loss:.4g} after epoch "
                f"{epoch}/{epochs}, far above the {guess:.2f} of a uniform guess"),
                RuntimeWarning, stacklevel=3)
            warned = True
        val_loss = val_acc = None
        if validation_data is not None:
            val_loss, val_acc = _evaluate(model, *validation_data,
                                          batch_size=max(batch_size, 256), replicas=replicas)
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
    ``backend.kernels.infer_chunk`` images at once), in order."""
    _positive_int(batch_size, "batch_size")
    chunk = model.backend.kernels.infer_chunk
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
def evaluate(model, x, y, batch_size: int = 256, *, replicas: OneProcess = ONE_PROCESS):
    """Mean loss and accuracy of ``model`` on ``(x, y)``; see :meth:`Sequential.evaluate`.
    With ``replicas`` each process evaluates its shard of the rows and the sums are added."""
    _check_data(model, x, y)
    return _evaluate(model, *_device_data(model, x, y), batch_size, replicas=replicas)


def _evaluate(model, x, y, batch_size: int, *, replicas: OneProcess = ONE_PROCESS):
    """:func:`evaluate` on data already checked (and where it fits, on the device)."""
    loss_fn = _loss_kernel(model)
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


@on_device
def predict(model, x, batch_size: int = 256, *, replicas: OneProcess = ONE_PROCESS):
    """Class probabilities of ``model`` for ``x``; see :meth:`Sequential.predict`. With
    ``replicas`` each process predicts its shard of the rows and every process gets all."""
    _check_data(model, x, values=False)
    x, _ = _device_data(model, x)
    start, end = replicas.shard(0, x.shape[0])
    outs = _inference(model, _rows(x, start, end), batch_size)
    if model.loss_name == "cross_entropy":
        outs = [model.backend.kernels.softmax(out, axis=1) for out in outs]
    if not outs:                                # an empty shard
        backend = model.backend
        return replicas.gather(backend.xp.zeros((0, *model.output_shape),
                                                dtype=backend.dtype(model.dtype_name),
                                                device=backend.device))
    return replicas.gather(model.backend.xp.concat(outs, axis=0))


def _rows(arr, start, stop):
    """Rows ``[start, stop)`` of ``arr``; ``arr`` itself when that is all of them."""
    return arr if (start, stop) == (0, arr.shape[0]) else arr[start:stop, ...]


class _Divergence:
    """The check of one epoch's loss: NaN or infinity raises ``FloatingPointError`` naming the
    epoch and suggesting a lower learning rate (closing the progress bar first)."""

    def __init__(self, epoch, epochs, optimizer, batch_size, progress):
        self.epoch, self.epochs, self.optimizer = epoch, epochs, optimizer
        self.batch_size, self.progress = batch_size, progress

    def message(self, what: str) -> str:
        return (f"{what} ({self.optimizer}, batch size {self.batch_size}); lower the learning "
                f"rate (e.g. lr={self.optimizer.lr / 10:g}) or use a larger batch")

    def check(self, loss: float) -> None:
        if math.isfinite(loss):
            return
        if self.progress is not None:
            self.progress.close()
        raise FloatingPointError(
            self.message(f"training diverged: the loss became {loss} in epoch "
                         f"{self.epoch}/{self.epochs}")
            + ". The weights are no longer finite: rebuild or reload the model before training "
            "again")


class _Progress:
    """Progress of one epoch on ``file`` (default stderr): a tqdm bar when it is a terminal,
    otherwise a plain line every ``EVERY_S`` seconds of a long epoch, with no carriage
    returns, so a log stays one line per event."""

    EVERY_S = 5.0

    def __init__(self, steps: int, desc: str, file=None):
        self.steps, self.desc = steps, desc
        self.file = file or sys.stderr
        self.bar = None
        if hasattr(self.file, "isatty") and self.file.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=steps, desc=desc, unit="batch", leave=False, file=self.file,
                            dynamic_ncols=True, mininterval=0.25)
        self.next_line = time.perf_counter() + self.EVERY_S

    def due(self, i: int) -> bool:
        """Count batch ``i`` (from 0) done; True when running figures should be shown."""
        if self.bar is not None:
            self.bar.update(1)
            return i % 20 == 19 or i == self.steps - 1
        now = time.perf_counter()
        if now < self.next_line or i == self.steps - 1:    # the epoch line follows the last
            return False
        self.next_line = now + self.EVERY_S
        return True

    def show(self, i: int, figures: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(figures, refresh=False)
        else:
            line = f"{self.desc}: {i + 1}/{self.steps} batches"
            print(f"{line}, {figures}" if figures else line, file=self.file, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
