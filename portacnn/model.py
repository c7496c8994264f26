"""``Sequential``: a stack of layers with shape inference, summary, fit / evaluate / predict.

    >>> model = Sequential([Conv2D(6, 5, padding=2), Tanh(), AvgPool2D(2), Flatten(), Dense(10)],
    ...                    input_shape=(1, 28, 28), device="cpu", seed=0)
    >>> model.summary()
    >>> history = model.fit(x_train, y_train, epochs=5, batch_size=32, optimizer=SGD(0.02, 0.9),
    ...                     validation_data=(x_test, y_test))
    >>> loss, accuracy = model.evaluate(x_test, y_test)

Inputs to ``fit`` / ``evaluate`` / ``predict`` may be host NumPy arrays (each batch is moved to
the model's device once) or arrays already on the model's device. The training loss and accuracy
are accumulated on the device and read back once per epoch, so a GPU is never made to wait
inside the batch loop.
"""

from __future__ import annotations

import copy
import math
import os
import sys
import time
import weakref

from . import kernels as K
from .checkpoint import rebuilds_exactly
from .layers import Layer
from .optim import Optimizer, get_optimizer
from .runtime import Backend, describe_array, get_backend, is_host_array, single_threaded_blas

__all__ = ["Sequential", "History"]

LOSSES = {"cross_entropy": K.softmax_cross_entropy, "mse": K.mse}
# The smallest chunk of a training batch given a worker of its own. Threads queue for the GIL
# between NumPy calls, so small chunks do not pay (LeNet-5 at batch 32 split in two trained
# 1.3x slower than unsplit); helper processes do not queue, and batch 32 split in two trained
# 1.34x faster (3.68 vs 4.91 ms a step, 6 interleaved rounds, 2 cores).
MIN_SPLIT = {"threads": 32, "processes": 16}
ROUND_BYTES = 16 << 20   # input rows a helper process takes per evaluate/predict request


def _forward(layers, x):
    for layer in layers:
        x = layer._forward(x)
    return x


def _backward(layers, dy) -> None:
    for layer in reversed(layers):
        dy = layer._backward(dy)


def chunk_gradients(layers, loss_fn, x, y, spans, n: int) -> list:
    """Forward and backward of each chunk ``x[start:stop]`` for ``(start, stop)`` in ``spans``.

    Each chunk's loss (a mean over its rows) is weighted by ``rows / n``, so the chunks'
    gradients and losses add up to those of the whole batch of ``n``. Returns, per chunk,
    ``(grads, weighted loss, logits)``, the grads in the order of ``Sequential.parameters()``.
    """
    done = []
    for start, stop in spans:
        logits = _forward(layers, x[start:stop, ...])
        loss, dlogits = loss_fn(logits, y[start:stop, ...])
        weight = (stop - start) / n
        _backward(layers, dlogits * weight)
        grads = [layer.grads[key] for layer in layers for key in layer.params]
        done.append((grads, loss * weight, logits))
    return done


def _groups(items: list, parts: int) -> list:
    """``items`` cut into at most ``parts`` contiguous, near-equal, non-empty groups."""
    parts = max(1, min(parts, len(items)))
    return [items[len(items) * i // parts: len(items) * (i + 1) // parts] for i in range(parts)]


class History:
    """Per-epoch metrics from :meth:`Sequential.fit`.

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


class Sequential:
    """Layers applied in order. Shapes are inferred from ``input_shape`` (per sample, NCHW
    without N, e.g. ``(1, 28, 28)``), so layers need not be told their input sizes.

    Args:
        layers: the layers, or add them later with :meth:`add`.
        input_shape: per-sample input shape; the model is built as soon as it is known.
        device: a device string or :class:`~portacnn.runtime.Backend` (default
            ``$PORTACNN_DEVICE`` or ``"cpu"``).
        dtype: ``"float32"`` (default) or ``"float64"`` for every layer.
        seed: seed of the initial weights (same weights on every backend).
        loss: ``"cross_entropy"`` (softmax cross-entropy from logits; the last layer outputs
            logits) or ``"mse"``.
    """

    def __init__(self, layers=None, *, input_shape=None, device=None, dtype: str = "float32",
                 seed: int | None = 0, loss: str = "cross_entropy"):
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; choose one of {', '.join(LOSSES)}")
        if dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
        self.layers: list[Layer] = []
        self.backend: Backend = get_backend(device)
        self.dtype_name = dtype
        self.seed = seed
        self.loss_name = loss
        self.input_shape = None if input_shape is None else tuple(int(d) for d in input_shape)
        self.optimizer: Optimizer | None = None
        self.training = True
        self._helpers = None          # helper processes, started by _helper_pool()
        for layer in layers or []:
            self.add(layer)
        if self.input_shape is not None and self.layers:
            self.build()

    # --- construction ---------------------------------------------------------------------
    def add(self, layer: Layer) -> "Sequential":
        """Append a layer (before the model is built)."""
        if not isinstance(layer, Layer):
            raise TypeError(f"Sequential takes portacnn layers, got {type(layer).__name__}")
        if self.built:
            raise RuntimeError("the model is already built: add every layer before build()")
        self.layers.append(layer)
        return self

    @property
    def built(self) -> bool:
        return bool(self.layers) and all(layer.built for layer in self.layers)

    def build(self, input_shape=None) -> "Sequential":
        """Create every layer's parameters for per-sample ``input_shape`` on the model's device.

        Raises ``ValueError`` naming the first layer whose input shape does not fit.
        """
        if input_shape is not None:
            self.input_shape = tuple(int(d) for d in input_shape)
        if self.input_shape is None:
            raise ValueError("the input shape is unknown: pass input_shape=(C, H, W) to Sequential")
        if not self.layers:
            raise ValueError("the model has no layers")
        rng = self.backend.rng(self.seed)
        shape = self.input_shape
        for i, layer in enumerate(self.layers):
            layer.dtype_name = self.dtype_name
            try:
                shape = layer.build(shape, self.backend,
                                    rng if getattr(layer, "seed", None) is None else None)
            except ValueError as exc:
                raise ValueError(f"layer {i} ({layer.name}): {exc}") from None
            layer.need_input_grad = i > 0     # nothing upstream of the first layer
            layer.train(self.training)
        self.output_shape = shape
        return self

    def _require_built(self):
        if not self.built:
            raise RuntimeError("the model is not built: give Sequential an input_shape or call "
                               "build((C, H, W))")

    # --- introspection --------------------------------------------------------------------
    def parameters(self):
        """``[(name, params_dict, key, grads_dict), ...]`` with names like ``"0.weight"``."""
        return [(f"{i}.{key}", layer.params, key, layer.grads)
                for i, layer in enumerate(self.layers) for key in layer.params]

    def num_params(self) -> int:
        return sum(layer.num_params() for layer in self.layers)

    def summary(self, file=None) -> str:
        """Print (and return) a table of layer name, output shape and parameter count."""
        self._require_built()
        rows = []
        shape = self.input_shape
        for i, layer in enumerate(self.layers):
            shape = layer.output_shape(shape)
            label = layer.name if layer.name == type(layer).__name__ else (
                f"{layer.name} ({type(layer).__name__})")
            rows.append((f"{i:>2} {label}", layer.describe(),
                         "(N, " + ", ".join(map(str, shape)) + ")", f"{layer.num_params():,}"))
        head = ("Layer", "Settings", "Output shape", "Params")
        widths = [max(len(h), *(len(r[k]) for r in rows)) for k, h in enumerate(head)]

        def fmt(cells):
            return "  ".join(c.rjust(w) if k == 3 else c.ljust(w)
                             for k, (c, w) in enumerate(zip(cells, widths)))

        line = "-" * (sum(widths) + 6)
        out = [f"Sequential on {self.backend.description}, {self.dtype_name}, "
               f"input (N, {', '.join(map(str, self.input_shape))})", line, fmt(head), line]
        out += [fmt(r) for r in rows]
        out += [line, f"Total params: {self.num_params():,}"]
        buffers = sum(math.prod(b.shape) for layer in self.layers for b in layer.buffers.values())
        if buffers:
            out.append(f"Buffers (running statistics, not trained): {buffers:,}")
        text = "\n".join(out)
        print(text, file=file or sys.stdout)
        return text

    def __repr__(self) -> str:
        return f"Sequential({len(self.layers)} layers, device={self.backend.name}:{self.backend.device})"

    # --- modes and devices ----------------------------------------------------------------
    def train(self, mode: bool = True) -> "Sequential":
        """Training mode (dropout active, caches kept for backward)."""
        self.training = mode
        for layer in self.layers:
            layer.train(mode)
        return self

    def eval(self) -> "Sequential":
        """Inference mode: dropout is the identity and no backward caches are kept."""
        return self.train(False)

    def to(self, device) -> "Sequential":
        """Move parameters, buffers and optimizer state to another device or backend."""
        backend = get_backend(device)
        for layer in self.layers:
            layer.to(backend)
        if self.optimizer is not None:
            self.optimizer.to(backend)
        self.backend = backend
        return self

    # --- forward / backward ---------------------------------------------------------------
    def forward(self, x):
        """Logits for a batch ``x`` already on the model's device, shape (N, *input_shape)."""
        self._check_input(x)
        return _forward(self.layers, x)

    def _check_input(self, x) -> None:
        # Checked once here, so the layers' own per-call checks are skipped.
        self._require_built()
        self.backend.check(x, "the model input")
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"the model expects inputs of shape (N, "
                             f"{', '.join(map(str, self.input_shape))}), got {tuple(x.shape)}")
        if x.dtype != self.backend.dtype(self.dtype_name):
            raise TypeError(f"the model is {self.dtype_name} but the input is {x.dtype}: cast it "
                            f"with model.backend.asarray(x, dtype='{self.dtype_name}')")

    __call__ = forward

    def backward(self, dlogits) -> None:
        """Back-propagate dL/dlogits through every layer, filling each layer's ``grads``."""
        _backward(self.layers, dlogits)

    def train_step(self, x, y, optimizer: Optimizer):
        """One forward, backward and update on a device batch. Returns ``(loss, logits)``
        as device arrays (no host synchronisation).

        On CPU backends the batch may run as chunks whose gradients are summed before the
        single update: the same step up to float rounding. Chunks hold at most
        ``backend.max_train_chunk`` images, so each chunk's working set stays in cache, and with
        ``backend.workers`` > 1 the chunks are shared among that many workers: helper
        processes (NumPy on Linux, models of built-in layers; see :mod:`portacnn.helpers`) or
        host threads. With the same chunks the result does not depend on the workers; with 2
        workers a batch may be cut into more chunks so both get an equal share. Models
        whose layers couple the samples of a batch or draw random numbers (batch norm,
        dropout) always run the batch whole, so their results do not depend on the backend.
        """
        self._check_input(x)
        bounds = self._chunk_bounds(x.shape[0]) if self._chunkable else (0, x.shape[0])
        if len(bounds) == 2:
            logits = _forward(self.layers, x)
            loss, dlogits = LOSSES[self.loss_name](logits, y)
            _backward(self.layers, dlogits)
        else:
            loss, logits = self._accumulate(x, y, bounds)
        optimizer.step(self.parameters())
        return loss, logits

    @property
    def _chunkable(self) -> bool:
        return all(layer.samples_independent for layer in self.layers)

    def _chunk_bounds(self, n: int) -> tuple:
        """Where a training batch of ``n`` is cut into equal chunks: ``(0, ..., n)``."""
        chunk, workers = self.backend.max_train_chunk, self.backend.workers
        pieces = 1 if chunk is None else -(-n // chunk)
        if workers > 1:
            # Give every worker an equal share if that leaves no chunk under MIN_SPLIT images.
            shared = -(-max(pieces, workers) // workers) * workers
            kind = "processes" if self._helpers_apply() else "threads"
            if n >= shared * MIN_SPLIT[kind]:
                pieces = shared
        return tuple(n * i // pieces for i in range(pieces + 1))

    def _accumulate(self, x, y, bounds):
        """Forward/backward chunk by chunk, the chunks shared among ``backend.workers``
        helper processes or threads (see :meth:`_helper_pool`). Gradients and loss are
        weighted by chunk size and summed in chunk order, so the result does not depend on
        the number of workers or on whether they are processes or threads."""
        xp = self.backend.xp
        n = x.shape[0]
        spans = list(zip(bounds[:-1], bounds[1:]))
        loss_fn = LOSSES[self.loss_name]
        pool = self._helper_pool()
        if pool is not None:
            groups = _groups(spans, self.backend.workers)
            # The helpers' replies are drained by the next request if this one is abandoned.
            with single_threaded_blas():
                self._submit(pool, "train", groups[1:], lambda a, b: x[a:b, ...], y, n)
                chunks = chunk_gradients(self.layers, loss_fn, x, y, groups[0], n)
                chunks += self._collect(pool)
        else:
            parts = self.backend.parallel_map(
                lambda job: chunk_gradients(job[0], loss_fn, x, y, job[1], n), self._jobs(spans))
            chunks = [c for part in parts for c in part]
        totals, losses, _ = chunks[0]
        for grads, loss, _ in chunks[1:]:
            totals = [a + b for a, b in zip(totals, grads)]
            losses = losses + loss
        slots = [(layer.grads, key) for layer in self.layers for key in layer.params]
        for (grads, key), total in zip(slots, totals):
            grads[key] = total
        return losses, xp.concat([logits for _, _, logits in chunks], axis=0)

    def _jobs(self, spans: list) -> list:
        """``(layers, group of spans)`` for each of ``backend.workers`` threads: the first
        thread runs the model's own layers, the others a replica each."""
        return [(self.layers if i == 0 else self._replica(), group)
                for i, group in enumerate(_groups(spans, self.backend.workers))]

    def _replica(self) -> list:
        """The layers again, sharing parameters and buffers but with their own gradients and
        caches, for a second thread to run forward/backward on at the same time."""
        copies = []
        for layer in self.layers:
            twin = copy.copy(layer)
            twin.grads, twin._cache = {}, None
            copies.append(twin)
        return copies

    def _helper_pool(self):
        """The model's :class:`~portacnn.helpers.HelperPool` when ``backend.workers`` > 1 and
        the backend runs helper processes (NumPy on Linux) for a model of built-in layers;
        None otherwise (threads are used then). Started on first use, kept while the worker
        count stays the same, ended with the model."""
        workers = self.backend.workers
        if not self._helpers_apply():
            return None
        if self._helpers is not None and self._helpers.owner != os.getpid():
            self._helpers_finalizer.detach()      # inherited through fork: the parent's helpers
            self._helpers = None
        if self._helpers is not None and self._helpers.workers != workers:
            self._close_helpers()
        if self._helpers is None:
            from .helpers import HelperPool

            self._helpers = HelperPool(self, workers - 1)
            self._helpers_finalizer = weakref.finalize(self, self._helpers.close)
        return self._helpers

    def _helpers_apply(self) -> bool:
        return (self.backend.workers > 1 and self.backend.helper_processes
                and rebuilds_exactly(self))

    def _submit(self, pool, *args, **kwargs) -> None:
        try:
            pool.submit(self, *args, **kwargs)
        except BaseException:
            self._close_helpers()     # a failed helper is not reused; the next step starts anew
            raise

    def _collect(self, pool) -> list:
        try:
            return pool.collect()
        except BaseException:
            self._close_helpers()
            raise

    def _close_helpers(self) -> None:
        if self._helpers is not None:
            self._helpers_finalizer()
            self._helpers = None

    def _map_inference(self, x, batch_size: int) -> list:
        """The outputs for ``x`` chunk by chunk, in order. With ``backend.workers`` > 1 the
        chunks are shared in contiguous groups among helper processes or threads; the chunks
        themselves are the same as with one worker, and so are the results."""
        step = self._inference_step(batch_size)
        n = x.shape[0]
        spans = [(start, min(start + step, n)) for start in range(0, n, step)]

        def rows(start, stop):
            return self._batch(x, start, stop, None, self.dtype_name)

        def run(job):
            layers, group = job
            return [_forward(layers, rows(start, stop)) for start, stop in group]

        pool = self._helper_pool() if len(spans) > 1 else None
        if pool is not None:
            # In rounds, so a helper's shared block holds at most ~ROUND_BYTES of input rows
            # however large x is.
            image_bytes = math.prod(self.input_shape) * (4 if self.dtype_name == "float32" else 8)
            per_round = max(1, ROUND_BYTES // (image_bytes * step)) * self.backend.workers
            outs = []
            with single_threaded_blas():
                for first in range(0, len(spans), per_round):
                    groups = _groups(spans[first:first + per_round], self.backend.workers)
                    self._submit(pool, "forward", groups[1:], rows)
                    outs += run((self.layers, groups[0]))
                    outs += self._collect(pool)
            return outs
        return [out for part in self.backend.parallel_map(run, self._jobs(spans)) for out in part]

    # --- data plumbing --------------------------------------------------------------------
    def _check_data(self, x, y=None, what="x"):
        for arr, name in ((x, what), (y, "y")):
            if arr is None:
                continue
            if not (is_host_array(arr) or self.backend.owns(arr)):
                raise TypeError(
                    f"{name} is a {describe_array(arr)} but the model is on {self.backend.name} "
                    f"({self.backend.device}): pass a host NumPy array or move it with "
                    "model.backend.asarray(x)"
                )
        if x.ndim == 0 or x.shape[0] == 0:
            raise ValueError(f"{what} has no samples (shape {tuple(x.shape)})")
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"{what} has shape {tuple(x.shape)} but the model expects "
                             f"(N, {', '.join(map(str, self.input_shape))})")
        if y is not None and y.shape[0] != x.shape[0]:
            raise ValueError(f"{what} has {x.shape[0]} samples but y has {y.shape[0]}")

    def _batch(self, arr, start, stop, order, dtype=None):
        """Rows ``order[start:stop]`` (or ``start:stop``) of ``arr``, moved once to the device."""
        if order is None:
            part = arr[start:stop, ...]
        elif is_host_array(arr):
            part = arr[order[start:stop], ...]                  # host gather, then one copy
        else:
            xp = self.backend.xp
            part = xp.take(arr, self.backend.asarray(order[start:stop]), axis=0)
        return self.backend.asarray(part, dtype=dtype)

    def _batches(self, x, y, batch_size, order=None):
        n = x.shape[0]
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            xb = self._batch(x, start, stop, order, self.dtype_name)
            yb = None if y is None else self._batch(y, start, stop, order)
            yield xb, yb

    def _targets_and_hits(self, logits, yb):
        xp = self.backend.xp
        if self.loss_name != "cross_entropy":
            return None
        labels = yb if yb.ndim == 1 else xp.argmax(yb, axis=1)
        return xp.sum(xp.astype(xp.argmax(logits, axis=1) == labels, self.backend.dtype(self.dtype_name)))

    # --- public training API --------------------------------------------------------------
    def fit(self, x, y, epochs: int = 1, batch_size: int = 32, optimizer="sgd", *,
            validation_data=None, validation_split: float = 0.0, shuffle: bool = True,
            seed: int | None = 0, verbose: int = 1, file=None) -> History:
        """Train for ``epochs`` passes over ``(x, y)``.

        Args:
            x: (N, *input_shape) inputs, float (already normalised); host NumPy or on device.
            y: (N,) integer labels (or (N, K) targets for MSE).
            optimizer: an :class:`~portacnn.optim.Optimizer` or a name (``"sgd"``, ``"adam"``...).
            validation_data: ``(x_val, y_val)`` evaluated after each epoch; or
            validation_split: the fraction of ``x`` (taken from its end, before shuffling) held
                out for validation.
            shuffle, seed: reshuffle each epoch with a seeded generator.
            verbose: 0 silent, 1 a progress bar per epoch and a line per epoch, 2 lines only.

        Returns:
            :class:`History` with per-epoch loss, accuracy, val_loss, val_accuracy, seconds and
            images_per_s.
        """
        self._require_built()
        if not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs must be a positive int, got {epochs!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self._check_data(x, y)
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
            self._check_data(*validation_data, what="validation x")
        self.optimizer = optimizer = get_optimizer(optimizer)
        xp = self.backend.xp
        rng = self.backend.rng(seed)
        n = x.shape[0]
        steps = math.ceil(n / batch_size)
        history = History()
        for epoch in range(1, epochs + 1):
            self.train()
            order = rng.permutation(n) if shuffle else None
            total_loss = xp.zeros((), dtype=self.backend.dtype(self.dtype_name), device=self.backend.device)
            total_hits = total_loss * 0
            bar = _progress(steps, f"epoch {epoch}/{epochs}", verbose == 1, file)
            t0 = time.perf_counter()
            for i, (xb, yb) in enumerate(self._batches(x, y, batch_size, order)):
                loss, logits = self.train_step(xb, yb, optimizer)
                total_loss = total_loss + loss * xb.shape[0]
                hits = self._targets_and_hits(logits, yb)
                if hits is not None:
                    total_hits = total_hits + hits
                if bar is not None:
                    bar.update(1)
                    # Reading a scalar stalls a GPU: show running figures only where it is free.
                    if self.backend.host_sync_is_free and (i % 20 == 19 or i == steps - 1):
                        seen = min((i + 1) * batch_size, n)
                        bar.set_postfix(loss=f"{float(total_loss) / seen:.4f}",
                                        acc=f"{float(total_hits) / seen:.4f}", refresh=False)
            self.backend.synchronize()
            seconds = time.perf_counter() - t0
            epoch_loss = float(total_loss) / n          # one device->host read per epoch
            epoch_acc = float(total_hits) / n if self.loss_name == "cross_entropy" else None
            if bar is not None:
                bar.set_postfix(loss=f"{epoch_loss:.4f}", acc=f"{epoch_acc or 0:.4f}")
                bar.close()
            val_loss = val_acc = None
            if validation_data is not None:
                val_loss, val_acc = self.evaluate(*validation_data, batch_size=max(batch_size, 256))
            history.append(loss=epoch_loss, accuracy=epoch_acc, val_loss=val_loss,
                           val_accuracy=val_acc, seconds=seconds, images_per_s=n / seconds)
            if verbose:
                line = (f"epoch {epoch}/{epochs}: loss {epoch_loss:.4f}"
                        + (f", accuracy {epoch_acc:.4f}" if epoch_acc is not None else "")
                        + (f", val_loss {val_loss:.4f}, val_accuracy {val_acc:.4f}"
                           if val_loss is not None else "")
                        + f", {seconds:.2f} s, {n / seconds:,.0f} images/s")
                print(line, file=file or sys.stdout, flush=True)
        self.train()
        return history

    def _inference_step(self, batch_size: int) -> int:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        chunk = self.backend.max_chunk
        return batch_size if chunk is None else min(batch_size, chunk)

    def evaluate(self, x, y, batch_size: int = 256):
        """Mean loss and accuracy on ``(x, y)`` in eval mode. Returns ``(loss, accuracy)``
        (accuracy is None for the MSE loss). On CPU backends at most
        ``backend.max_chunk`` images go through the network at once, shared among
        ``backend.workers`` helper processes or threads (faster, same result)."""
        self._require_built()
        self._check_data(x, y)
        was_training = self.training
        self.eval()
        loss_fn = LOSSES[self.loss_name]
        try:
            outs = self._map_inference(x, batch_size)
        finally:
            self.train(was_training)
        total_loss = total_hits = None
        start = 0
        for logits in outs:
            stop = start + logits.shape[0]
            yb = self._batch(y, start, stop, None)
            loss = loss_fn(logits, yb)[0] * logits.shape[0]
            hits = self._targets_and_hits(logits, yb)
            total_loss = loss if total_loss is None else total_loss + loss
            total_hits = hits if total_hits is None else total_hits + hits
            start = stop
        n = x.shape[0]
        acc = float(total_hits) / n if self.loss_name == "cross_entropy" else None
        return float(total_loss) / n, acc

    def predict(self, x, batch_size: int = 256):
        """Class probabilities (softmax of the logits) for ``x``, in eval mode.

        Returns an (N, classes) array on the model's device (``model.backend.to_numpy`` copies
        it to the host); with the MSE loss, the raw outputs. On CPU backends at most
        ``backend.max_chunk`` images go through the network at once, shared among
        ``backend.workers`` helper processes or threads (faster, same result).
        """
        self._require_built()
        self._check_data(x)
        was_training = self.training
        self.eval()
        try:
            outs = self._map_inference(x, batch_size)
        finally:
            self.train(was_training)
        if self.loss_name == "cross_entropy":
            outs = [K.softmax(out, axis=1) for out in outs]
        return self.backend.xp.concat(outs, axis=0)

    # --- persistence ----------------------------------------------------------------------
    def save(self, path, *, include_optimizer: bool = True) -> None:
        """Write weights, buffers and optimizer state to ``path`` (safetensors, atomic)."""
        from .checkpoint import save
        save(self, path, include_optimizer=include_optimizer)


def _progress(total, desc, enabled, file):
    if not enabled:
        return None
    from tqdm import tqdm

    file = file or sys.stderr
    tty = hasattr(file, "isatty") and file.isatty()
    # In a log (not a terminal) redraw rarely, so the file is not flooded with bars.
    return tqdm(total=total, desc=desc, unit="batch", leave=False, file=file,
                dynamic_ncols=True, mininterval=0.25 if tty else 5.0)
