"""``Sequential``: the container. Layers in order, shape inference, parameters, summary,
devices and save (:func:`portacnn.load` reads the file back, :mod:`.loading`).

    >>> model = Sequential([Conv2D(6, 5, padding=2), Tanh(), AvgPool2D(2), Flatten(), Dense(10)],
    ...                    input_shape=(1, 28, 28), device="cpu", seed=0)
    >>> model.summary()
    >>> history = model.fit(x_train, y_train, epochs=5, batch_size=32, optimizer=SGD(0.02, 0.9),
    ...                     validation_data=(x_test, y_test))
    >>> loss, accuracy = model.evaluate(x_test, y_test)
    >>> model.save("model.safetensors"); same = portacnn.load("model.safetensors")

The training loop itself (``fit`` / ``evaluate`` / ``predict``) lives in
:mod:`portacnn.training`; the methods here hand the model to it.
"""

from __future__ import annotations

from ..backends import on_device
from ..layers import Layer
from ..layers.base import unchanged_on_error
from ..scalars import positive_int
from .base import ModelBase

__all__ = ["Sequential"]


def _per_sample(input_shape) -> tuple:
    """A per-sample input shape ``(C, H, W)`` as a tuple of ints, each checked >= 1."""
    return tuple(positive_int(d, "every size in input_shape") for d in input_shape)


class Sequential(ModelBase):
    """Layers applied in order. Shapes are inferred from ``input_shape`` (per sample, NCHW
    without N, e.g. ``(1, 28, 28)``), so layers need not be told their input sizes.

    Layers that were told them (``Conv2D(8, 3, in_channels=1)``) or that already hold weights
    are checked against the inferred shapes and keep their weights; a layer made with an
    explicit ``dtype`` must agree with the model's.

    Args:
        layers: the layers, or add them later with :meth:`add`.
        input_shape: per-sample input shape; the model is built as soon as it is known. Without
            it the model is built from the first batch that ``fit`` / ``evaluate`` /
            ``predict`` / ``forward`` sees.
        device: a device string or :class:`~portacnn.backends.Backend` (default
            ``$PORTACNN_DEVICE`` or ``"cpu"``).
        dtype: ``"float32"`` (default) or ``"float64"`` for every layer.
        seed: seed of the initial weights (same weights on every backend).
        loss: ``"cross_entropy"`` (softmax cross-entropy from logits; the last layer outputs
            logits) or ``"mse"``.

    The methods every model has (``fit``, ``evaluate``, ``predict``, ``train_step``,
    ``parameters``, ``summary``, ``to``, ``save``...) are :class:`~.base.ModelBase`'s.
    """

    def __init__(self, layers=None, *, input_shape=None, device=None, dtype: str = "float32",
                 seed: int | None = 0, loss: str = "cross_entropy"):
        super().__init__(device=device, dtype=dtype, seed=seed, loss=loss)
        self.input_shape = None if input_shape is None else _per_sample(input_shape)
        for layer in layers or []:
            self.add(layer)
        if self.input_shape is not None and self.layers:
            self.build()

    # --- construction ---------------------------------------------------------------------
    def add(self, layer: Layer) -> "Sequential":
        """Append a layer (before the model is built).

        Raises ``ValueError`` for a layer made with a ``dtype`` other than the model's.
        """
        self._check_layer(layer)
        if layer.multiple_inputs:
            raise TypeError(f"{layer.name} merges several tensors, which a Sequential model "
                            "does not have: build the network as a graph, portacnn.Model(inputs, "
                            "outputs)")
        if self.built:
            raise RuntimeError("the model is already built: add every layer before build()")
        self.layers.append(layer)
        return self

    def build(self, input_shape=None) -> "Sequential":
        """Create every layer's parameters for per-sample ``input_shape`` on the model's device.

        A layer that is already built (told its input size, or given weights by hand) keeps
        its weights: they are checked against the inferred input shape and moved to the
        model's device and dtype.

        Raises ``ValueError`` naming the first layer whose input shape does not fit. A build
        that raises leaves the model and its layers as they were (unbuilt, without the input
        shape it was given), so the next call with good data builds it afresh.
        """
        input_shape = self.input_shape if input_shape is None else _per_sample(input_shape)
        if input_shape is None:
            raise ValueError("the input shape is unknown: pass input_shape=(C, H, W) to Sequential")
        if not self.layers:
            raise ValueError("the model has no layers")
        rng = self.backend.rng(self.seed)
        shape = input_shape
        with self.backend.activate(), unchanged_on_error(self.layers):
            for i, layer in enumerate(self.layers):
                try:
                    shape = self._build_layer(layer, shape, rng)
                except ValueError as exc:
                    raise ValueError(f"layer {i} ({layer.name}): {exc}") from None
                layer.need_input_grad = i > 0     # nothing upstream of the first layer
                layer.train(self.training)
        self._made(input_shape, shape)
        return self

    def require_built(self) -> None:
        """Raise ``RuntimeError`` unless the model is built."""
        if not self.built:
            raise RuntimeError("the model is not built: give Sequential an input_shape, call "
                               "build((C, H, W)), or let fit / predict build it from the data")

    def build_for(self, x) -> None:
        """Build from the per-sample shape of a first batch ``x`` (N, *input_shape) unless
        the model is built already (as Keras builds on the first batch it sees)."""
        if self.built:
            return
        if self.input_shape is None and len(x.shape) < 2:
            raise ValueError(f"cannot build the model from an input of shape {tuple(x.shape)}: "
                             "give a batch (N, C, H, W), or input_shape=(C, H, W) to Sequential")
        self.build(self.input_shape or tuple(x.shape[1:]))

    def __repr__(self) -> str:
        return f"Sequential({len(self.layers)} layers, device={self.backend.name}:{self.backend.device})"

    def summary_rows(self) -> list[tuple]:
        """The summary's rows: ``(index, layer, per-sample output shape, inputs)`` for each
        layer in order (``inputs`` None: each layer takes the one before it)."""
        rows, shape = [], self.input_shape
        for i, layer in enumerate(self.layers):
            shape = layer.output_shape(shape)
            rows.append((i, layer, shape, None))
        return rows

    # --- forward / backward ---------------------------------------------------------------
    @on_device
    def forward(self, x):
        """Logits for a batch ``x`` already on the model's device, shape (N, *input_shape)."""
        self.build_for(x)
        self.check_input(x)
        for layer in self.layers:
            x = layer._forward(x)           # checked once above, not again per layer
        self._forward_mode = "train" if self.training else "eval"
        return x

    __call__ = forward

    @on_device
    def activations(self, x) -> list[tuple]:
        """``(layer, output)`` for each layer in order, for a batch ``x`` on the model's
        device (``portacnn.viz`` draws them); run in the model's current mode."""
        self.check_input(x)
        out = []
        for layer in self.layers:
            x = layer._forward(x)
            out.append((layer, x))
        return out

    @on_device
    def backward(self, dlogits) -> None:
        """Back-propagate dL/dlogits through every layer, filling each layer's ``grads``.

        Raises ``RuntimeError`` before any forward, or after a forward in eval mode (which
        keeps no caches)."""
        self._check_backward()
        for layer in reversed(self.layers):
            dlogits = layer.backward(dlogits)

    # --- persistence ----------------------------------------------------------------------
    def architecture(self) -> dict:
        """The JSON-able description :func:`load` rebuilds the (untrained) model from."""
        return {
            "class": "Sequential",
            "input_shape": list(self.input_shape),
            "dtype": self.dtype_name,
            "loss": self.loss_name,
            "seed": self.seed,
            "layers": self._layer_descriptions(),
        }
