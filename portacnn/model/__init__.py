"""The models: :class:`Sequential` (layers in order), :class:`Model` (layers in a graph), and
:func:`load`.

- :mod:`.base`: ``ModelBase``, what both share: device, dtype, optimizer, the parameters made
  once at build, modes, ``to``, the input check, ``summary``, ``save`` and ``fit`` /
  ``evaluate`` / ``predict`` / ``train_step`` (which hand the model to
  :mod:`portacnn.training`);
- :mod:`.sequential`: ``Sequential``: layers in order, shape inference, forward / backward;
- :mod:`.graph`: ``Model``: layers called on symbolic tensors (``portacnn.Input``), Keras's
  functional API: skip connections, branches, shared layers;
- :mod:`.summary`: the table ``summary`` prints;
- :mod:`.loading`: :func:`load` a checkpoint and :func:`rebuild` a model from its description;
- :mod:`.onnx_export`: ``export_onnx``, the inference forward traced into an ONNX file.
"""

from .base import ModelBase
from .graph import Model
from .loading import load, rebuild
from .onnx_export import OnnxExportError
from .sequential import Sequential

__all__ = ["Model", "ModelBase", "OnnxExportError", "Sequential", "load", "rebuild"]
