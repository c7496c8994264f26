"""Layers: thin classes that hold parameters, gradients and the forward cache.

The math lives in :mod:`portacnn.kernels`; a layer only keeps what backward needs. Every layer
has ``forward(x)``, ``backward(dy) -> dx`` and the dicts ``params`` / ``grads`` (keys
``"weight"`` / ``"bias"``). Shapes follow PyTorch: inputs NCHW, conv weight
``(out_channels, in_channels, kh, kw)``, dense weight ``(out_features, in_features)``.

A layer reaches its kernels by attribute: ``self.kernels`` is its backend's kernel set
(``backend.kernels``): a :class:`portacnn.kernels.Kernels`, whose attributes are the portable
kernels, or a subclass that overrides some of them with faster versions (the NumPy backend's
:class:`portacnn.kernels.CpuKernels`). ``Conv2D._forward`` calls
``self.kernels.conv2d_forward(...)``; reading the set's class finds the function that runs.

Where each layer lives:

* :mod:`.base`: :class:`Layer` (building, modes, devices, the input checks of ``forward``),
  :class:`Parameter` / :class:`Buffer` (one trainable / saved array of a layer, as optimizers
  and checkpoints see it) and the building helpers (initial weights, build-at-construction);
* :mod:`.windows`: the padding and ``summary()`` text shared by convolution and pooling;
* :mod:`.conv`: :class:`Conv2D`;
* :mod:`.pooling`: :class:`MaxPool2D`, :class:`MinPool2D`, :class:`AvgPool2D`,
  :class:`GlobalAvgPool2D`;
* :mod:`.upsample`: :class:`Upsample2D`;
* :mod:`.dense`: :class:`Dense`, :class:`Flatten`;
* :mod:`.normalization`: :class:`BatchNorm2D`, :class:`BatchNorm1D`;
* :mod:`.activations`: :class:`ReLU`, :class:`Tanh`, :class:`Sigmoid`;
* :mod:`.dropout`: :class:`Dropout`;
* :mod:`.merge`: :class:`Add`, :class:`Concatenate` (several inputs), :class:`Identity`;
* :mod:`.symbolic`: :func:`Input` and :class:`SymbolicTensor`, what calling a layer on a
  symbolic tensor records for a graph model (:class:`portacnn.Model`).

Every public name is importable from here (``from portacnn.layers import Conv2D``), and
:data:`LAYERS` maps each layer class's name to the class (checkpoints rebuild models from it).
A layer imports kernels and backends only, never the model or training.

A layer whose input size is not given is built on its first ``forward`` (or by
:class:`portacnn.Sequential` from ``input_shape``), on the backend of that input:

    >>> conv = Conv2D(6, 5, padding=2, in_channels=1, seed=0)   # built now, on the CPU
    >>> dense = Dense(10)                                      # built when it first sees x
"""

from .activations import ReLU, Sigmoid, Tanh
from .base import Buffer, Layer, Parameter
from .conv import Conv2D
from .dense import Dense, Flatten
from .dropout import Dropout
from .merge import Add, Concatenate, Identity
from .normalization import BatchNorm1D, BatchNorm2D
from .pooling import AvgPool2D, GlobalAvgPool2D, MaxPool2D, MinPool2D
from .symbolic import Input, SymbolicTensor
from .upsample import Upsample2D

__all__ = ["Parameter", "Buffer", "Layer", "Conv2D", "MaxPool2D", "MinPool2D", "AvgPool2D",
           "GlobalAvgPool2D", "Upsample2D", "BatchNorm2D", "BatchNorm1D", "Dense", "Flatten",
           "ReLU", "Tanh", "Sigmoid", "Dropout", "Add", "Concatenate", "Identity", "Input",
           "SymbolicTensor", "LAYERS"]

LAYERS = {cls.__name__: cls for cls in (Conv2D, MaxPool2D, MinPool2D, AvgPool2D,
                                        GlobalAvgPool2D, Upsample2D, BatchNorm2D, BatchNorm1D,
                                        Dense, Flatten, ReLU, Tanh, Sigmoid, Dropout, Add,
                                        Concatenate, Identity)}
