"""The model: :class:`Sequential`, the container of layers, and :func:`load`.

- :mod:`.sequential`: ``Sequential``: layers in order, shape inference, the parameters made
  once at build, forward / backward, devices, ``fit`` / ``evaluate`` / ``predict`` (which hand
  the model to :mod:`portacnn.training`) and ``save``;
- :mod:`.summary`: the table ``Sequential.summary`` prints;
- :mod:`.loading`: :func:`load` a checkpoint and :func:`rebuild` a model from its description.
"""

from .loading import load, rebuild
from .sequential import Sequential

__all__ = ["Sequential", "load", "rebuild"]
