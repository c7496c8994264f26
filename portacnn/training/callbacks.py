"""Callbacks: code that ``fit(..., callbacks=[...])`` runs around each epoch, Keras's names.

``fit`` gives each callback the model (``callback.model``) and ``callback.params``
(``epochs``, ``steps`` per epoch, ``verbose`` and ``is_root``: whether this process prints and
writes files, False on all but rank 0 under data parallelism), then calls
``on_train_begin(logs)``, per epoch ``on_epoch_begin(epoch, logs)`` and
``on_epoch_end(epoch, logs)``, and ``on_train_end(logs)``. Epochs count from 0 in each ``fit``
call; ``logs`` at an epoch's end are that epoch's :class:`~.progress.History` entries
(``loss``, ``accuracy``, ``val_loss``, ``val_accuracy``, ``seconds``, ``images_per_s``, those
recorded). A callback that sets ``model.stop_training = True`` ends ``fit`` after the epoch.

Under data parallelism every process runs the callbacks on the same logs (the losses and
accuracies are sums gathered from every process and added in rank order on each: the same
bits everywhere), and ``fit`` takes rank 0's ``stop_training`` for all, so the processes stop
together. :class:`ModelCheckpoint` writes on rank 0 only.

    >>> from portacnn.training import EarlyStopping, LearningRateScheduler, ModelCheckpoint
    >>> from portacnn.schedules import cosine_decay
    >>> model.fit(x, y, epochs=30, validation_split=0.1, callbacks=[
    ...     LearningRateScheduler(cosine_decay(0.05, epochs=30)),
    ...     EarlyStopping(patience=3, restore_best_weights=True),
    ...     ModelCheckpoint("best.safetensors", save_best_only=True)])
"""

from __future__ import annotations

import inspect
import math

from ..backends import namespace

__all__ = ["Callback", "CallbackList", "EarlyStopping", "LearningRateScheduler",
           "ModelCheckpoint"]


class Callback:
    """Base class: override any of the four methods; ``self.model`` and ``self.params`` are
    set by ``fit`` before ``on_train_begin``."""

    model = None
    params: dict = {}

    def set_model(self, model) -> None:
        self.model = model

    def set_params(self, params: dict) -> None:
        self.params = params

    def on_train_begin(self, logs=None) -> None:
        """Before the first epoch."""

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        """Before epoch ``epoch`` (from 0)."""

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        """After epoch ``epoch`` and its validation; ``logs``: its History entries."""

    def on_train_end(self, logs=None) -> None:
        """After the last epoch (``logs``: the last epoch's); not after an exception."""


class CallbackList:
    """The callbacks of one ``fit`` call, each method called on each in order."""

    def __init__(self, callbacks, model, params: dict):
        self.callbacks = list(callbacks or ())
        for callback in self.callbacks:
            if not isinstance(callback, Callback):
                raise TypeError(f"callbacks must be portacnn.training.Callback instances, got "
                                f"{callback!r}: subclass Callback to write one")
            callback.set_model(model)
            callback.set_params(params)
        model.stop_training = False

    def __bool__(self) -> bool:
        return bool(self.callbacks)

    def on_train_begin(self, logs=None):
        for callback in self.callbacks:
            callback.on_train_begin(logs)

    def on_epoch_begin(self, epoch: int, logs=None):
        for callback in self.callbacks:
            callback.on_epoch_begin(epoch, logs)

    def on_epoch_end(self, epoch: int, logs=None):
        for callback in self.callbacks:
            callback.on_epoch_end(epoch, logs)

    def on_train_end(self, logs=None):
        for callback in self.callbacks:
            callback.on_train_end(logs)


class _Monitor:
    """The monitored entry of the logs and whether a value improves on the best so far:
    ``mode`` ``"min"``, ``"max"``, or ``"auto"`` (max for an accuracy, min otherwise)."""

    def __init__(self, owner: str, monitor: str, mode: str, min_delta: float = 0.0):
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
        if not (isinstance(min_delta, (int, float)) and min_delta >= 0):
            raise ValueError(f"min_delta must be a number >= 0, got {min_delta!r}")
        self.owner, self.monitor = owner, monitor
        self.maximize = mode == "max" or (mode == "auto" and "acc" in monitor)
        self.min_delta = float(min_delta)

    def initial(self) -> float:
        return -math.inf if self.maximize else math.inf

    def value(self, logs) -> float:
        logs = logs or {}
        if self.monitor not in logs:
            fix = ("pass validation_data or validation_split to fit, or monitor "
                   f"{self.monitor[4:]!r}" if self.monitor.startswith("val_")
                   else "monitor one of those")
            raise ValueError(f"{self.owner} monitors {self.monitor!r}, which this fit does not "
                             f"record (it records {', '.join(logs)}): {fix}")
        return float(logs[self.monitor])

    def improves(self, value: float, best: float) -> bool:
        """``value`` beats ``best`` by more than ``min_delta``."""
        if self.maximize:
            return value - self.min_delta > best
        return value + self.min_delta < best


def _weights(model) -> list:
    """Copies of every parameter and buffer value, in ``model.parameters()`` then
    ``model.buffers()`` order, on the model's device."""
    slots = (*model.parameters(), *model.buffers())
    return [namespace(slot.value).asarray(slot.value, copy=True) for slot in slots]


class EarlyStopping(Callback):
    """Stop training when ``monitor`` has not improved for ``patience`` epochs (Keras's
    rule: an epoch improves when it beats the best so far by more than ``min_delta``; after
    ``patience`` epochs in a row that do not, ``fit`` ends).

    Args:
        monitor: a logs entry, ``"val_loss"`` by default (needs validation data).
        min_delta: the least change that counts as an improvement.
        patience: epochs without improvement before stopping (0: stop at the first).
        verbose: 1 prints the epoch it stopped at (on the printing process).
        mode: ``"min"``, ``"max"`` or ``"auto"`` (max for a name with "acc", else min).
        restore_best_weights: at the end of training, put back the parameters and buffers of
            the best epoch (kept as device copies: one more model's worth of memory).

    Attributes: ``best``, ``best_epoch``, ``stopped_epoch`` (0 if it never stopped), ``wait``.
    """

    def __init__(self, monitor: str = "val_loss", min_delta: float = 0.0, patience: int = 0,
                 verbose: int = 0, mode: str = "auto", restore_best_weights: bool = False):
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
            raise ValueError(f"patience must be a whole number of epochs >= 0, got {patience!r}")
        self._monitor = _Monitor("EarlyStopping", monitor, mode, min_delta)
        self.monitor, self.patience, self.verbose = monitor, patience, verbose
        self.restore_best_weights = bool(restore_best_weights)

    def on_train_begin(self, logs=None):
        self.wait, self.stopped_epoch, self.best_epoch = 0, 0, 0
        self.best = self._monitor.initial()
        self.best_weights = None

    def on_epoch_end(self, epoch, logs=None):
        current = self._monitor.value(logs)
        self.wait += 1
        if self._monitor.improves(current, self.best):
            self.best, self.best_epoch, self.wait = current, epoch, 0
            if self.restore_best_weights:
                self.best_weights = _weights(self.model)
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        printing = self.verbose and self.params.get("is_root", True)
        if self.stopped_epoch and printing:
            print(f"epoch {self.stopped_epoch + 1}: early stopping ({self.monitor} has not "
                  f"improved for {self.wait} epochs)")
        if self.restore_best_weights and self.best_weights is not None:
            if printing:
                print(f"restoring the weights of the best epoch, {self.best_epoch + 1} "
                      f"({self.monitor} {self.best:.4f})")
            for slot, value in zip((*self.model.parameters(), *self.model.buffers()),
                                   self.best_weights):
                slot.value = value
            self.best_weights = None


class ModelCheckpoint(Callback):
    """Save the model (``model.save``: atomic, never half-written) after each epoch, or with
    ``save_best_only`` only after an epoch whose ``monitor`` is the best so far. Under data
    parallelism rank 0 writes.

    Args:
        filepath: the ``.safetensors`` file; ``str.format`` fields name the epoch (from 1)
            and the logs: ``"ckpt-{epoch:02d}-{val_loss:.3f}.safetensors"``.
        monitor: the logs entry that ``save_best_only`` compares (default ``"val_loss"``).
        verbose: 1 prints a line for each file written.
        save_best_only: write only on improvement (Keras's default, False, writes every
            epoch).
        mode: ``"min"``, ``"max"`` or ``"auto"``, as :class:`EarlyStopping`.
    """

    def __init__(self, filepath, monitor: str = "val_loss", verbose: int = 0,
                 save_best_only: bool = False, mode: str = "auto"):
        self.filepath = filepath
        self._monitor = _Monitor("ModelCheckpoint", monitor, mode)
        self.monitor, self.verbose = monitor, verbose
        self.save_best_only = bool(save_best_only)
        self.best = self._monitor.initial()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.save_best_only:
            current = self._monitor.value(logs)
            if not self._monitor.improves(current, self.best):
                return
            self.best = current
        path = str(self.filepath).format(epoch=epoch + 1, **logs)
        if self.params.get("is_root", True):
            self.model.save(path)
            if self.verbose:
                print(f"epoch {epoch + 1}: saved {path}"
                      + (f" ({self.monitor} {self.best:.4f})" if self.save_best_only else ""))


class LearningRateScheduler(Callback):
    """Set ``model.optimizer.learning_rate`` to ``schedule(epoch)`` at the start of each
    epoch (from 0), or ``schedule(epoch, rate)`` where ``schedule`` takes two arguments (the
    current rate), as Keras's. Schedules: :mod:`portacnn.schedules` or any such function."""

    def __init__(self, schedule, verbose: int = 0):
        if not callable(schedule):
            raise TypeError(f"schedule must be a function of the epoch, got {schedule!r}")
        self.schedule, self.verbose = schedule, verbose
        try:
            positional = [p for p in inspect.signature(schedule).parameters.values()
                          if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
            self._with_rate = len(positional) >= 2
        except (TypeError, ValueError):         # a builtin without a signature
            self._with_rate = False

    def on_epoch_begin(self, epoch, logs=None):
        optimizer = self.model.optimizer
        rate = (self.schedule(epoch, optimizer.learning_rate) if self._with_rate
                else self.schedule(epoch))
        optimizer.learning_rate = rate          # checked there: a positive finite number
        if self.verbose and self.params.get("is_root", True):
            print(f"epoch {epoch + 1}: learning rate {optimizer.learning_rate:g}")
