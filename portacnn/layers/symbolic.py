"""Symbolic tensors: what a graph model (:class:`portacnn.Model`) is written with, as in
Keras's functional API.

    >>> x = Input((3, 32, 32))                        # SymbolicTensor (N, 3, 32, 32)
    >>> h = Conv2D(3, 3, padding="same")(x)           # records the call: (N, 3, 32, 32)
    >>> y = Add()([h, x])                             # a skip connection
    >>> model = portacnn.Model(x, Dense(10)(Flatten()(y)))

Calling a layer on a :class:`SymbolicTensor` computes nothing, allocates nothing and changes
nothing in the layer: it checks that the layer takes the input's per-sample shape (the
layer's ``output_shape``) and returns a new ``SymbolicTensor`` that records the call (the
layer and its input tensors). ``Model`` walks those records back from its output.
"""

from __future__ import annotations

import itertools

from ..namespace import describe_array
from ..scalars import positive_int

__all__ = ["Input", "SymbolicTensor", "is_symbolic", "call_symbolic"]

_SERIAL = itertools.count()      # creation order: a topological order of every graph


class SymbolicTensor:
    """A placeholder for a batch (N, *shape) in a graph: the model's input (``layer`` None,
    made by :func:`Input`) or the output of ``layer`` called on ``inputs``.

    Attributes:
        shape: the per-sample shape (without the batch axis), e.g. ``(16, 32, 32)``.
        layer: the layer whose call made it, or None for an input.
        inputs: the tensors that call took, in order (empty for an input).
    """

    __slots__ = ("shape", "layer", "inputs", "serial")

    def __init__(self, shape, layer=None, inputs=()):
        self.shape = tuple(shape)
        self.layer = layer
        self.inputs = tuple(inputs)
        self.serial = next(_SERIAL)

    def __repr__(self) -> str:
        made = "Input" if self.layer is None else f"from {self.layer.name}"
        return f"SymbolicTensor((N, {', '.join(map(str, self.shape))}), {made})"

    def __array__(self, *args, **kwargs):
        raise TypeError("a SymbolicTensor holds no values, it only describes a graph: make a "
                        "portacnn.Model(inputs, outputs) and call its predict or forward on data")


def Input(shape) -> SymbolicTensor:  # noqa: N802 (Keras's name)
    """The input of a graph model: a :class:`SymbolicTensor` of per-sample ``shape``
    (``(C, H, W)`` for images, e.g. ``(3, 32, 32)``; the batch axis is left out)."""
    if isinstance(shape, (int, str)) or not hasattr(shape, "__iter__"):
        raise TypeError(f"Input takes a per-sample shape such as (3, 32, 32), got {shape!r}")
    shape = tuple(positive_int(d, "every size in the Input shape") for d in shape)
    if not shape:
        raise ValueError("Input needs a per-sample shape with at least one axis, e.g. (3, 32, 32)")
    return SymbolicTensor(shape)


def is_symbolic(x) -> bool:
    """Whether ``x`` is a SymbolicTensor or a list / tuple holding one (a graph call)."""
    if isinstance(x, SymbolicTensor):
        return True
    return isinstance(x, (list, tuple)) and any(isinstance(t, SymbolicTensor) for t in x)


def call_symbolic(layer, x) -> SymbolicTensor:
    """Record ``layer`` called on ``x`` (a SymbolicTensor, or a list of them for a layer with
    ``multiple_inputs``): the output's SymbolicTensor.

    Raises:
        TypeError: a list given to a one-input layer, one tensor to a merging layer, or a
            fixed array beside symbolic tensors.
        ValueError: the layer cannot take the inputs' shapes (its message names both).
    """
    listed = isinstance(x, (list, tuple))
    inputs = list(x) if listed else [x]
    strays = [t for t in inputs if not isinstance(t, SymbolicTensor)]
    if strays:
        raise TypeError(
            f"{layer.name} was called on symbolic tensors and a {describe_array(strays[0])}: in "
            "a graph every input comes from portacnn.Input or another layer's call; a fixed "
            "array cannot be one")
    if layer.multiple_inputs:
        if not listed or len(inputs) < 2:
            raise TypeError(f"{layer.name} merges several tensors: call it on a list of two or "
                            f"more, {type(layer).__name__}()([a, b])")
        shape_arg = [t.shape for t in inputs]
    else:
        if listed:
            raise TypeError(f"{layer.name} takes one tensor, got a list of {len(inputs)}: merge "
                            "them first with portacnn.Add or portacnn.Concatenate")
        shape_arg = x.shape
    try:
        out = layer.output_shape(shape_arg)
    except ValueError as exc:
        given = " and ".join(f"(N, {', '.join(map(str, t.shape))})" for t in inputs)
        raise ValueError(f"{layer.name} cannot be called on {given}: {exc}") from None
    return SymbolicTensor(out, layer, inputs)
