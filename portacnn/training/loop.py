"""The training loop: one step, ``fit``, ``evaluate`` and ``predict``.

These functions take any model with the containers' interface (:class:`portacnn.Sequential`,
:class:`portacnn.Model`: ``layers``, ``backend``, ``build_for``, ``forward`` / ``backward``,
``parameters()``, ``train()`` / ``eval()``); the models' ``fit`` and friends call them. Everything here runs with
the model's device current (``Backend.activate``).

Each call takes the same steps before any work: check the arrays (:mod:`.checks`), build the
model from ``x`` if it is not built (``model.build_for``), check the data against the built
model, then stage the data on the device (:mod:`.staging`).

What is read back to the host, and when (a read makes a GPU wait for its queue):

- the checks: one boolean per value check (NaN or infinity in ``x`` or MSE targets, the
  labels' range or one-hot rows), once per call, before any training;
- ``fit``: the epoch's summed loss and correct predictions, at the end of each epoch; and with
  ``verbose=1`` on a backend where a read is free (``backend.host_sync_is_free``: the CPU),
  the running loss and accuracy at each progress update (every 20th and the last batch on a
  terminal, every ``Progress.EVERY_S`` seconds in a log). On a GPU nothing is read inside the
  batch loop;
- ``evaluate`` (and ``fit``'s validation, once per epoch): the summed loss and correct
  predictions, once at the end; ``predict``: nothing.

A loss that turns NaN or infinite stops ``fit`` at the end of that epoch at the latest (at the
next progress update where reading is free).

Where the backend's kernel set has a ``train_chunk`` (the CPU's), a training batch runs as
chunks of at most that many images whose gradients are summed before the one update: the same
step up to float rounding, with each chunk's working set in cache. Models whose layers couple
the samples of a batch or draw random numbers (batch norm, dropout) always run the batch whole.

``fit``, ``evaluate`` and ``predict`` take ``replicas``: where the work of a batch is done. The
default, :data:`~.replicas.ONE_PROCESS`, is this process alone.
:class:`portacnn.distributed.DataParallel` passes itself: each process then computes its shard
of every batch and the shards' gradients and sums are added up across processes (see
:class:`~.replicas.OneProcess` for its methods).
"""

from __future__ import annotations

import math
import sys
import time

from ..backends import on_device
from ..optim import SGD, get_optimizer
from ..scalars import seed_or_none
from ..threads import threads_for_fit
from . import checks, staging
from .augment import check_augmentation, epoch_rng
from .callbacks import CallbackList
from .compiled import CompiledTraining, check_compilable, compiled_forward
from .progress import Divergence, History, Progress
from .replicas import ONE_PROCESS, OneProcess

__all__ = ["LOSSES", "train_step", "accumulate_gradients", "fit", "evaluate", "predict"]

LOSSES = ("cross_entropy", "mse")       # the model's ``loss`` names one of these


def _loss_kernel(model):
    """The loss kernel of ``model.loss_name`` in the backend's set: ``(logits, targets) ->
    (mean loss, dL/dlogits)``."""
    kernels = model.backend.kernels
    return kernels.softmax_cross_entropy if model.loss_name == "cross_entropy" else kernels.mse


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
    of near-equal size, each weighted by ``chunk rows / batch_rows`` the same way (unless a
    layer couples the samples). An empty part (a data-parallel shard of a batch smaller than the process count)
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


def _hits(model, logits, yb):
    """Correct predictions in a batch as a 0-d device array (None for the MSE loss)."""
    if model.loss_name != "cross_entropy":
        return None
    xp = model.backend.xp
    labels = yb if yb.ndim == 1 else xp.argmax(yb, axis=1)
    return xp.sum(xp.astype(xp.argmax(logits, axis=1) == labels, logits.dtype))


# --- fit ----------------------------------------------------------------------------------
@on_device
def fit(model, x, y, epochs: int = 1, batch_size: int = 32, optimizer=None, *,
        validation_data=None, validation_split: float = 0.0, shuffle: bool = True,
        seed: int | None = 0, verbose: int = 1, file=None, augment=None, callbacks=None,
        threads: int | None = None, replicas: OneProcess = ONE_PROCESS,
        compile: bool = False) -> History:
    """Train ``model`` for ``epochs`` passes over ``(x, y)``; see :meth:`Sequential.fit`.
    ``augment``: applied to each training batch (not to validation data), with plans drawn
    for the whole batch from :func:`~.augment.epoch_rng` (see :mod:`.augment`).
    ``callbacks``: :class:`~.callbacks.Callback` objects run around each epoch; training ends
    early after an epoch where one sets ``model.stop_training`` (rank 0's decides for every
    process). ``threads``: BLAS threads while training (:func:`portacnn.threads.threads_for_fit`
    decides when None; one a process under data parallelism). ``replicas``: where each batch is
    computed (see the module's docstring). ``compile``: each step traced into one program by
    ``jax.jit`` (a JAX model in one process; :mod:`.compiled`), validation's forward too."""
    epochs = checks.positive_int(epochs, "epochs")
    augment = check_augmentation(augment)
    batch_size = checks.positive_int(batch_size, "batch_size")
    seed = seed_or_none(seed)
    if validation_data is not None:
        validation_data = checks.validation_pair(validation_data)
    checks.check_arrays(model, x, y)
    model.build_for(x)
    if compile:
        check_compilable(model, replicas)
    checks.check_against_model(model, x, y)
    x, y, validation_data = staging.hold_out(model, x, y, validation_data, validation_split)
    x, y = staging.device_data(model, x, y)
    if optimizer is None:     # keep the model's (from load or an earlier fit), else plain SGD
        optimizer = model.optimizer if model.optimizer is not None else SGD(0.01)
    model.optimizer = optimizer = get_optimizer(optimizer)
    step = CompiledTraining(model, optimizer, train_step) if compile else None
    if not replicas.is_root:
        verbose = 0                             # one process prints
    rng = model.backend.rng(seed)
    n, steps = x.shape[0], math.ceil(x.shape[0] / batch_size)
    has_accuracy = model.loss_name == "cross_entropy"
    divergence = Divergence(epochs, optimizer, batch_size, classes=model.output_shape[0],
                            hint=has_accuracy and replicas.is_root)
    history = History()
    callbacks = CallbackList(callbacks, model, {"epochs": epochs, "steps": steps,
                                                "verbose": verbose, "is_root": replicas.is_root})
    if threads is None and replicas.size > 1:
        threads = 1                 # a core a process: each rank's BLAS on one thread
    with model.backend.limit_threads(threads_for_fit(threads)):
        callbacks.on_train_begin()
        logs = {}
        for epoch in range(1, epochs + 1):
            callbacks.on_epoch_begin(epoch - 1)
            order = rng.permutation(n) if shuffle else None
            progress = (Progress(steps, epoch, divergence, file, accuracy=has_accuracy,
                                 live=model.backend.host_sync_is_free) if verbose == 1 else None)
            augmenting = None if augment is None else (augment, epoch_rng(seed, epoch))
            loss_sum, hits_sum, seconds = _train_epoch(model, x, y, order, batch_size, optimizer,
                                                       replicas, progress, augmenting, step)
            loss, acc = loss_sum / n, (hits_sum / n if has_accuracy else None)
            divergence.after_epoch(loss, epoch, progress)
            val_loss = val_acc = None
            if validation_data is not None:
                val_loss, val_acc = _evaluate(model, *validation_data,
                                              batch_size=max(batch_size, 256), replicas=replicas,
                                              compile=compile)
            history.append(loss=loss, accuracy=acc, val_loss=val_loss, val_accuracy=val_acc,
                           seconds=seconds, images_per_s=n / seconds)
            if verbose:
                print(history.line(epochs), file=file or sys.stdout, flush=True)
            logs = {key: values[-1] for key, values in history.history.items()}
            callbacks.on_epoch_end(epoch - 1, logs)
            if callbacks and replicas.from_root(model.stop_training):
                break
        model.train()
        callbacks.on_train_end(logs)
        return history


def _train_epoch(model, x, y, order, batch_size: int, optimizer, replicas: OneProcess,
                 progress: Progress | None, augmenting=None,
                 compiled: CompiledTraining | None = None) -> tuple[float, float, float]:
    """One training pass over ``(x, y)`` in batches of ``batch_size`` rows, taken in ``order``
    (row indices; None: as they are). ``augmenting``: None or ``(augmentation, generator)``;
    each process draws the plan of every whole batch and applies its shard's rows.
    ``compiled``: the step to run instead of :func:`train_step` (``fit(compile=True)``). Returns
    ``(loss_sum, hits_sum, seconds)``: the summed per-row loss and correct predictions over
    every process, read back once at the end, and the seconds the batches took."""
    backend = model.backend
    xp, n = backend.xp, x.shape[0]
    model.train()
    x, y, order = staging.epoch_data(model, x, y, order)
    dtype = backend.dtype(model.dtype_name)
    total_loss = xp.zeros((), dtype=dtype, device=backend.device)
    total_hits = xp.zeros((), dtype=dtype, device=backend.device)
    seen = 0                                    # rows computed here (all, in one process)
    t0 = time.perf_counter()
    with backend.activate():
        for i, start in enumerate(range(0, n, batch_size)):
            stop = min(start + batch_size, n)
            lo, hi = replicas.shard(start, stop)
            xb = staging.batch(model, x, lo, hi, order, model.dtype_name)
            if augmenting is not None:
                augment, rng = augmenting
                xb = augment.apply(xb, augment.plan(rng, stop - start)[lo - start:hi - start])
            yb = staging.batch(model, y, lo, hi, order)
            if compiled is None:
                loss, logits = train_step(model, xb, yb, optimizer, batch_rows=stop - start,
                                          sum_gradients=replicas.sum_gradients)
            else:
                loss, logits = compiled(xb, yb)
            seen += hi - lo
            total_loss = total_loss + loss * (stop - start)
            hits = _hits(model, logits, yb)
            if hits is not None:
                total_hits = total_hits + hits
            if progress is not None:
                progress.batch_done(i, total_loss, total_hits, seen)
        backend.synchronize()
    seconds = time.perf_counter() - t0
    loss_sum, hits_sum = replicas.sum([float(total_loss), float(total_hits)])
    return loss_sum, hits_sum, seconds


# --- evaluate and predict ------------------------------------------------------------------
def _inference(model, x, batch_size: int, compile: bool = False) -> list:
    """The model's outputs for ``x`` in eval mode, chunk by chunk (at most
    ``backend.kernels.infer_chunk`` images at once), in order; with ``compile``, by the
    forward traced by ``jax.jit`` (:func:`~.compiled.compiled_forward`)."""
    batch_size = checks.positive_int(batch_size, "batch_size")
    chunk = model.backend.kernels.infer_chunk
    step = batch_size if chunk is None else min(batch_size, chunk)
    was_training = model.training
    model.eval()
    try:
        forward = compiled_forward(model) if compile else model.forward
        with model.backend.activate():
            return [forward(staging.batch(model, x, start, min(start + step, x.shape[0]),
                                                dtype=model.dtype_name))
                    for start in range(0, x.shape[0], step)]
    finally:
        model.train(was_training)


@on_device
def evaluate(model, x, y, batch_size: int = 256, *, replicas: OneProcess = ONE_PROCESS,
             compile: bool = False):
    """Mean loss and accuracy of ``model`` on ``(x, y)``; see :meth:`Sequential.evaluate`.
    With ``replicas`` each process evaluates its shard of the rows and the sums are added;
    with ``compile`` the forward is traced by ``jax.jit`` (a JAX model)."""
    checks.check_arrays(model, x, y)
    model.build_for(x)
    checks.check_against_model(model, x, y)
    return _evaluate(model, *staging.device_data(model, x, y), batch_size, replicas=replicas,
                     compile=compile)


def _evaluate(model, x, y, batch_size: int, *, replicas: OneProcess = ONE_PROCESS,
              compile: bool = False):
    """:func:`evaluate` on data already checked (and where it fits, on the device)."""
    loss_fn = _loss_kernel(model)
    total_loss = total_hits = None
    start, end = replicas.shard(0, x.shape[0])
    for logits in _inference(model, staging.rows(x, start, end), batch_size, compile):
        stop = start + logits.shape[0]
        yb = staging.batch(model, y, start, stop)
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
def predict(model, x, batch_size: int = 256, *, replicas: OneProcess = ONE_PROCESS,
            compile: bool = False):
    """Class probabilities of ``model`` for ``x``; see :meth:`Sequential.predict`. With
    ``replicas`` each process predicts its shard of the rows and every process gets all; with
    ``compile`` the forward is traced by ``jax.jit`` (a JAX model)."""
    checks.check_arrays(model, x)
    model.build_for(x)
    checks.check_against_model(model, x, values=False)
    x, _ = staging.device_data(model, x)
    start, end = replicas.shard(0, x.shape[0])
    outs = _inference(model, staging.rows(x, start, end), batch_size, compile)
    if model.loss_name == "cross_entropy":
        outs = [model.backend.kernels.softmax(out, axis=1) for out in outs]
    if not outs:                                # an empty shard
        backend = model.backend
        return replicas.gather(backend.xp.zeros((0, *model.output_shape),
                                                dtype=backend.dtype(model.dtype_name),
                                                device=backend.device))
    return replicas.gather(model.backend.xp.concat(outs, axis=0))
