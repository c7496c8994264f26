"""What ``fit`` shows and watches as it runs: History, the progress bar or lines, the epoch
line, and the divergence checks.

With ``verbose=1`` each epoch has a :class:`Progress`: a tqdm bar on a terminal, otherwise a
plain line every ``Progress.EVERY_S`` seconds of a long epoch. Where reading a scalar back is
free (``backend.host_sync_is_free``: the CPU) a progress update reads and shows the running
loss and accuracy, and a NaN or infinite running loss stops training there; elsewhere (a GPU)
it shows the batch count only. :class:`Divergence` checks each epoch's loss the same way and
warns, once per fit, when a finite loss is far above a uniform guess's.
"""

from __future__ import annotations

import math
import sys
import time
import warnings

__all__ = ["History", "Progress", "Divergence"]


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

    def line(self, epochs: int) -> str:
        """The last epoch as one log line, ``"epoch 3/10: loss 0.1234, accuracy 0.9612,
        val_loss ..., val_accuracy ..., 1.23 s, 3,456 images/s"`` (each figure only when
        recorded: the MSE loss has no accuracy, with or without validation)."""
        last = {key: values[-1] for key, values in self.history.items()}
        figures = [f"{key} {last[key]:.4f}" for key in self.KEYS[:4] if key in last]
        return (f"epoch {self.epochs}/{epochs}: {', '.join(figures)}, "
                f"{last['seconds']:.2f} s, {last['images_per_s']:,.0f} images/s")

    def __repr__(self) -> str:
        return f"History(epochs={self.epochs}, keys={list(self.history)})"


class Divergence:
    """The watch on one fit's loss. A NaN or infinite loss (running or of an epoch) raises
    ``FloatingPointError`` naming the epoch and suggesting a lower learning rate (closing the
    progress bar first). With ``hint`` (cross-entropy, the printing process), an epoch loss
    above three times a uniform guess's, ``3 ln(classes)``, warns: once per fit."""

    def __init__(self, epochs: int, optimizer, batch_size: int, *, classes: int, hint: bool):
        self.epochs, self.optimizer, self.batch_size = epochs, optimizer, batch_size
        self.guess = math.log(max(classes, 2))         # the loss of a uniform guess
        self.hint = hint

    def message(self, what: str) -> str:
        return (f"{what} ({self.optimizer}, batch size {self.batch_size}); lower the learning "
                f"rate (e.g. lr={self.optimizer.lr / 10:g}) or use a larger batch")

    def check(self, loss: float, epoch: int, progress: Progress | None = None) -> None:
        """Raise ``FloatingPointError`` if ``loss`` is NaN or infinite."""
        if math.isfinite(loss):
            return
        if progress is not None:
            progress.close()
        raise FloatingPointError(
            self.message(f"training diverged: the loss became {loss} in epoch "
                         f"{epoch}/{self.epochs}")
            + ". The weights are no longer finite: rebuild or reload the model before training "
            "again")

    def after_epoch(self, loss: float, epoch: int, progress: Progress | None) -> None:
        """Check the epoch's ``loss``, close the epoch's progress, and warn (once) if the loss
        is far above a uniform guess's."""
        self.check(loss, epoch, progress)
        if progress is not None:
            progress.close()
        if self.hint and loss > 3 * self.guess:
            warnings.warn(self.message(
                f"training is diverging: the loss is {loss:.4g} after epoch "
                f"{epoch}/{self.epochs}, far above the {self.guess:.2f} of a uniform guess"),
                RuntimeWarning, stacklevel=4)   # after_epoch <- fit <- on_device <- Sequential.fit
            self.hint = False


class Progress:
    """Progress of one epoch on ``file`` (default stderr): a tqdm bar when it is a terminal,
    otherwise a plain line every ``EVERY_S`` seconds of a long epoch, with no carriage
    returns, so a log stays one line per event.

    ``live``: read the running loss (and with ``accuracy`` the running accuracy) back at each
    update and show it, checking the loss with ``divergence``; only where a read is free.
    """

    EVERY_S = 5.0

    def __init__(self, steps: int, epoch: int, divergence: Divergence, file=None, *,
                 live: bool = False, accuracy: bool = False):
        self.steps, self.epoch, self.divergence = steps, epoch, divergence
        self.desc = f"epoch {epoch}/{divergence.epochs}"
        self.live, self.accuracy = live, accuracy
        self.file = file or sys.stderr
        self.bar = None
        if hasattr(self.file, "isatty") and self.file.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=steps, desc=self.desc, unit="batch", leave=False,
                            file=self.file, dynamic_ncols=True, mininterval=0.25)
        self.next_line = time.perf_counter() + self.EVERY_S

    def batch_done(self, i: int, loss_sum, hits_sum, seen: int) -> None:
        """Count batch ``i`` (from 0) done; when an update is due, show it. ``loss_sum`` and
        ``hits_sum`` (0-d device arrays) are the epoch's so far over ``seen`` rows: read back
        only when ``live``."""
        if not self._due(i):
            return
        figures = ""
        if self.live:
            running = float(loss_sum) / max(seen, 1)
            self.divergence.check(running, self.epoch, self)
            figures = f"loss {running:.4f}" + (
                f", accuracy {float(hits_sum) / max(seen, 1):.4f}" if self.accuracy else "")
        self._show(i, figures)

    def _due(self, i: int) -> bool:
        """Count batch ``i`` (from 0) done; True when running figures should be shown."""
        if self.bar is not None:
            self.bar.update(1)
            return i % 20 == 19 or i == self.steps - 1
        now = time.perf_counter()
        if now < self.next_line or i == self.steps - 1:    # the epoch line follows the last
            return False
        self.next_line = now + self.EVERY_S
        return True

    def _show(self, i: int, figures: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(figures, refresh=False)
        else:
            line = f"{self.desc}: {i + 1}/{self.steps} batches"
            print(f"{line}, {figures}" if figures else line, file=self.file, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
