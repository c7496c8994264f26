"""Learning-rate schedules: pure functions ``schedule(epoch) -> rate``, ``epoch`` counted from 0.

Each factory below returns such a function; they compose (``warmup(cosine_decay(...), 5)``)
and plug into training through :class:`portacnn.training.LearningRateScheduler`, which sets
``optimizer.learning_rate`` to ``schedule(epoch)`` at the start of each epoch (per epoch, as
PyTorch's schedulers are usually stepped and as Keras's ``LearningRateScheduler`` does: one
change of a host float per epoch, the optimizer's state untouched)::

    >>> from portacnn.schedules import cosine_decay, warmup
    >>> schedule = warmup(cosine_decay(0.1, epochs=45, floor=1e-4), epochs=5)   # 50 epochs
    >>> [round(schedule(e), 4) for e in (0, 4, 5, 50)]
    [0.0167, 0.0833, 0.1, 0.0001]

Any function of the epoch works as well (``lambda epoch: 0.1 if epoch < 10 else 0.01``).
"""

from __future__ import annotations

import math
from typing import Callable

from .scalars import is_real, positive_real

__all__ = ["Schedule", "step_decay", "cosine_decay", "warmup"]

Schedule = Callable[[int], float]       # epoch (from 0) -> learning rate


def _epochs(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive whole number of epochs, got {value!r}")
    return value


def step_decay(initial: float, every: int, drop: float = 0.1) -> Schedule:
    """``initial * drop ** (epoch // every)``: the rate multiplied by ``drop`` every ``every``
    epochs (PyTorch's ``StepLR(step_size=every, gamma=drop)``)."""
    initial = positive_real(initial, "initial")
    every = _epochs(every, "every")
    if not (is_real(drop) and 0 < drop <= 1):
        raise ValueError(f"drop must be in (0, 1], got {drop!r}")

    def step_decay(epoch: int) -> float:
        return initial * float(drop) ** (epoch // every)

    return step_decay


def cosine_decay(initial: float, epochs: int, floor: float = 0.0) -> Schedule:
    """Half a cosine from ``initial`` at epoch 0 down to ``floor`` at epoch ``epochs``, and
    ``floor`` after: ``floor + (initial - floor) * (1 + cos(pi * epoch / epochs)) / 2``
    (PyTorch's ``CosineAnnealingLR(T_max=epochs, eta_min=floor)``; Keras's ``CosineDecay``
    with ``alpha = floor / initial``, counted in epochs)."""
    initial = positive_real(initial, "initial")
    epochs = _epochs(epochs, "epochs")
    if not (is_real(floor) and 0 <= floor <= initial):
        raise ValueError(f"floor must be in [0, initial] = [0, {initial}], got {floor!r}")

    def cosine_decay(epoch: int) -> float:
        t = min(epoch, epochs) / epochs
        return float(floor) + (initial - float(floor)) * (1 + math.cos(math.pi * t)) / 2

    return cosine_decay


def warmup(schedule: Schedule | float, epochs: int) -> Schedule:
    """``epochs`` epochs of linear warm-up before ``schedule`` (a schedule, or a constant
    rate): epoch ``e < epochs`` gets ``schedule(0) * (e + 1) / (epochs + 1)``, a straight line
    from 0 up to the first rate of ``schedule``, which then runs from its own epoch 0
    (``schedule(e - epochs)``). No epoch has a zero rate."""
    epochs = _epochs(epochs, "warm-up epochs")
    if not callable(schedule):
        rate = positive_real(schedule, "the rate after warm-up")
        schedule = lambda epoch: rate    # noqa: E731  (a constant schedule)

    def warmup(epoch: int) -> float:
        if epoch < epochs:
            return schedule(0) * (epoch + 1) / (epochs + 1)
        return schedule(epoch - epochs)

    return warmup
