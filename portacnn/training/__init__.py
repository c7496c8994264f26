"""Training: one step, ``fit``, ``evaluate`` and ``predict`` over any model with the
container's interface (:class:`portacnn.Sequential` calls them), one job per module:

- :mod:`.loop`: ``train_step``, ``accumulate_gradients``, ``fit``, ``evaluate``, ``predict``;
  its docstring says what is read back to the host and when;
- :mod:`.checks`: the data checks at the boundary (checking never builds the model: the loop
  builds it between the checks of the arrays and those against the built model);
- :mod:`.staging`: moving data to the device, whole when it fits, else batch by batch;
- :mod:`.progress`: ``History``, the progress bar or lines, the epoch line, the divergence
  checks;
- :mod:`.augment`: ``RandomCropFlip``, augmentation of each training batch where it lives,
  drawn alike on every process;
- :mod:`.callbacks`: ``Callback`` and Keras's ``EarlyStopping``, ``ModelCheckpoint`` and
  ``LearningRateScheduler``, run by ``fit(..., callbacks=[...])`` around each epoch;
- :mod:`.compiled`: ``fit(..., compile=True)``'s step, the eager step traced by ``jax.jit``
  with the parameters, buffers, optimizer state and dropout masks as its inputs and outputs;
- :mod:`.replicas`: ``OneProcess``, the protocol of where a batch is computed, which
  :class:`portacnn.distributed.DataParallel` implements across processes.
"""

from .augment import RandomCropFlip
from . import callbacks
from .callbacks import Callback, EarlyStopping, LearningRateScheduler, ModelCheckpoint
from .loop import LOSSES, accumulate_gradients, evaluate, fit, predict, train_step
from .progress import History
from .replicas import ONE_PROCESS, OneProcess

__all__ = ["LOSSES", "History", "Callback", "EarlyStopping", "LearningRateScheduler",
           "ModelCheckpoint", "RandomCropFlip", "callbacks", "OneProcess", "ONE_PROCESS",
           "train_step", "accumulate_gradients", "fit", "evaluate", "predict"]
