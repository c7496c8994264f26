"""``portacnn.callbacks``: the callbacks of ``fit``, where Keras keeps them
(``from portacnn.callbacks import EarlyStopping``). They live in
:mod:`portacnn.training.callbacks`, beside the loop that runs them."""

from .training.callbacks import (Callback, EarlyStopping, LearningRateScheduler,
                                 ModelCheckpoint)

__all__ = ["Callback", "EarlyStopping", "LearningRateScheduler", "ModelCheckpoint"]
