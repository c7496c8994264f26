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

import sys

from .. import checkpoint, training
from ..backends import Backend, get_backend, on_device
from ..layers import Buffer, Layer, Parameter
from ..layers.base import unchanged_on_error
from ..optim import Optimizer, get_optimizer
from ..scalars import positive_int, seed_or_none
from .summary import summary_text

__all__ = ["Sequential"]


def _per_sample(input_shape) -> tuple:
    """A per-sample input shape ``(C, H, W)`` as a tuple of ints, each checked >= 1."""
    return tuple(positive_int(d, "every size in input_shape") for d in input_shape)


class Sequential:
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
    """

    def __init__(self, layers=None, *, input_shape=None, device=None, dtype: str = "float32",
                 seed: int | None = 0, loss: str = "cross_entropy"):
        if loss not in training.LOSSES:
            raise ValueError(f"unknown loss {loss!r}; choose one of {', '.join(training.LOSSES)}")
        if dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
        self.layers: list[Layer] = []
        self.backend: Backend = get_backend(device)
        self.dtype_name = dtype
        self.seed = seed_or_none(seed)
        self.loss_name = loss
        self.input_shape = None if input_shape is None else _per_sample(input_shape)
        self._optimizer: Optimizer | None = None
        self.training = True
        self.output_shape = None              # per-sample output shape, set by build
        self._parameters: tuple[Parameter, ...] = ()    # made once, by build
        self._buffers: tuple[Buffer, ...] = ()
        self._forward_mode = None             # "train" / "eval": the mode of the last forward
        for layer in layers or []:
            self.add(layer)
        if self.input_shape is not None and self.layers:
            self.build()

    # --- construction ---------------------------------------------------------------------
    def add(self, layer: Layer) -> "Sequential":
        """Append a layer (before the model is built).

        Raises ``ValueError`` for a layer made with a ``dtype`` other than the model's.
        """
        if not isinstance(layer, Layer):
            raise TypeError(f"Sequential takes portacnn layers, got {type(layer).__name__}")
        if self.built:
            raise RuntimeError("the model is already built: add every layer before build()")
        if layer.requested_dtype not in (None, self.dtype_name):
            raise ValueError(
                f"{layer.name} was made with dtype='{layer.requested_dtype}' but the model is "
                f"{self.dtype_name}: one model computes in one dtype; pass "
                f"dtype='{layer.requested_dtype}' to Sequential (its layers follow it) or drop "
                "the layer's dtype")
        self.layers.append(layer)
        return self

    @property
    def built(self) -> bool:
        return self.output_shape is not None

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
                    if layer.built:
                        shape = self._adopt(layer, shape)
                    else:
                        layer.dtype_name = self.dtype_name
                        shape = layer.build(shape, self.backend,
                                            rng if getattr(layer, "seed", None) is None else None)
                except ValueError as exc:
                    raise ValueError(f"layer {i} ({layer.name}): {exc}") from None
                layer.need_input_grad = i > 0     # nothing upstream of the first layer
                layer.train(self.training)
        self.input_shape = input_shape
        self._parameters = tuple(p for i, layer in enumerate(self.layers)
                                 for p in layer.parameters(f"{i}."))
        self._buffers = tuple(b for i, layer in enumerate(self.layers)
                              for b in layer.buffer_slots(f"{i}."))
        self.output_shape = shape
        return self

    def _adopt(self, layer: Layer, input_shape: tuple) -> tuple:
        """Take a built layer as it is for per-sample ``input_shape``: check that its known
        sizes and its parameters' shapes fit, then move it to the model's device and dtype.
        Returns its output shape."""
        out = layer.output_shape(input_shape)          # raises if a known input size differs
        have = {key: tuple(value.shape) for key, value in layer.params.items()}
        need = layer.param_shapes(input_shape)
        if have != need:
            raise ValueError(f"its parameters have shapes {have} but an input of per-sample "
                             f"shape {input_shape} needs {need}: give it weights of those "
                             "shapes, or an unbuilt layer to initialise here")
        if layer.input_shape is not None:
            layer.input_shape = tuple(input_shape)
        layer.to(self.backend, self.dtype_name)
        return out

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

    @property
    def optimizer(self) -> Optimizer | None:
        """The model's optimizer: set by ``fit`` or restored by :func:`portacnn.load`, and
        used by the next ``fit`` that is given none. Setting it binds the optimizer to the
        model's parameters (:meth:`~portacnn.optim.Optimizer.bind`), so one that already
        trains another model is refused."""
        return self._optimizer

    @optimizer.setter
    def optimizer(self, optimizer: Optimizer | None) -> None:
        if optimizer is not None:
            optimizer.bind(self.parameters())
        self._optimizer = optimizer

    # --- parameters -------------------------------------------------------------------------
    def parameters(self) -> tuple[Parameter, ...]:
        """Every trainable :class:`~portacnn.layers.Parameter`, named ``"{layer}.{key}"``
        (``"0.weight"``), made once when the model is built: the optimizer, checkpoints and
        data parallelism all use these objects. Empty before the model is built."""
        return self._parameters

    def buffers(self) -> tuple[Buffer, ...]:
        """Every saved but untrained array as a :class:`~portacnn.layers.Buffer`, named
        ``"{layer}.{key}"`` (``"1.running_mean"``), made once when the model is built."""
        return self._buffers

    def num_params(self) -> int:
        return sum(layer.num_params() for layer in self.layers)

    def summary(self, file=None) -> str:
        """Print (and return) a table of each layer's name, settings, output shape and
        parameter count (see :func:`~.summary.summary_text`)."""
        self.require_built()
        text = summary_text(self)
        print(text, file=file or sys.stdout)
        return text

    def __repr__(self) -> str:
        return f"Sequential({len(self.layers)} layers, device={self.backend.name}:{self.backend.device})"

    # --- modes and devices ----------------------------------------------------------------
    def train(self, mode: bool = True) -> "Sequential":
        """Training mode (dropout active, caches kept for backward)."""
        self.training = mode
        for layer in self.layers:
            layer.train(mode)
        return self

    def eval(self) -> "Sequential":
        """Inference mode: dropout is the identity and no backward caches are kept."""
        return self.train(False)

    def to(self, device) -> "Sequential":
        """Move parameters, buffers and optimizer state to another device or backend."""
        backend = get_backend(device)
        for layer in self.layers:
            layer.to(backend)
        if self.optimizer is not None:
            self.optimizer.to(backend)
        self.backend = backend
        return self

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

    def check_input(self, x) -> None:
        """Raise unless ``x`` is a batch on the model's device, shape and dtype."""
        self.require_built()
        self.backend.check(x, "the model input")
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"the model expects inputs of shape (N, "
                             f"{', '.join(map(str, self.input_shape))}), got {tuple(x.shape)}")
        if x.dtype != self.backend.dtype(self.dtype_name):
            raise TypeError(f"the model is {self.dtype_name} but the input is {x.dtype}: cast it "
                            f"with model.backend.asarray(x, dtype='{self.dtype_name}')")

    @on_device
    def backward(self, dlogits) -> None:
        """Back-propagate dL/dlogits through every layer, filling each layer's ``grads``.

        Raises ``RuntimeError`` before any forward, or after a forward in eval mode (which
        keeps no caches)."""
        if self._forward_mode != "train":
            raise RuntimeError(
                ("Sequential.backward called before forward" if self._forward_mode is None else
                 "Sequential.backward called after a forward in eval mode, which keeps no caches")
                + ": call model.train(), then model.forward(x), then backward")
        for layer in reversed(self.layers):
            dlogits = layer.backward(dlogits)

    # --- training (see portacnn.training) --------------------------------------------------
    def train_step(self, x, y, optimizer: Optimizer):
        """One forward, backward and update on a device batch; returns ``(loss, logits)``
        as device arrays. See :func:`portacnn.training.train_step`."""
        return training.train_step(self, x, y, optimizer)

    def fit(self, x, y, epochs: int = 1, batch_size: int = 32, optimizer=None, **kwargs):
        """Train for ``epochs`` passes over ``(x, y)``.

        Args:
            x: (N, *input_shape) inputs, float (already normalised); host NumPy or on device.
            y: (N,) integer labels in ``[0, classes)`` or (N, classes) one-hot rows (for MSE:
                targets of the output's shape). ``x`` and ``y`` are checked once, before
                training: a label out of range or a NaN / infinite input raises ``ValueError``
                naming the first bad sample.
            optimizer: an :class:`~portacnn.optim.Optimizer` or a name (``"sgd"``, ``"adam"``...);
                by default the model's own (``model.optimizer``: restored by :func:`load` or
                set by an earlier ``fit``), else ``SGD(lr=0.01)``. An optimizer trains one
                model: one that trains another is refused (``RuntimeError``).
            validation_data: ``(x_val, y_val)`` evaluated after each epoch; or
            validation_split: the fraction of ``x`` (taken from its end, before shuffling) held
                out for validation.
            shuffle, seed: reshuffle each epoch with a seeded generator.
            augment: an augmentation of each training batch, on its device (not of validation
                data), e.g. :class:`~portacnn.RandomCropFlip`; its draws are seeded by ``seed``
                and the epoch, alike on every backend and process.
            verbose: 0 silent, 1 progress (a bar on a terminal; otherwise a line every few
                seconds of a long epoch) and a line per epoch, 2 the epoch lines only.
            callbacks: :class:`~portacnn.training.Callback` objects run around each epoch
                (:mod:`portacnn.callbacks`: ``EarlyStopping``, ``ModelCheckpoint``,
                ``LearningRateScheduler`` for a schedule of :mod:`portacnn.schedules`).

        Returns:
            :class:`~portacnn.training.History` with per-epoch loss, accuracy, val_loss,
            val_accuracy, seconds and images_per_s.

        Raises:
            FloatingPointError: the loss became NaN or infinite (training diverged); raised at
                the end of that epoch at the latest, naming it.
        """
        return training.fit(self, x, y, epochs, batch_size, optimizer, **kwargs)

    def evaluate(self, x, y, batch_size: int = 256):
        """Mean loss and accuracy on ``(x, y)`` in eval mode: ``(loss, accuracy)`` (accuracy is
        None for the MSE loss). At most ``backend.kernels.infer_chunk`` images go through at once."""
        return training.evaluate(self, x, y, batch_size)

    def predict(self, x, batch_size: int = 256):
        """Class probabilities (softmax of the logits) for ``x`` (N, *input_shape), in eval
        mode: an (N, classes) array on the model's device (``model.backend.to_numpy`` copies it
        to the host); with the MSE loss, the raw outputs."""
        return training.predict(self, x, batch_size)

    # --- persistence ----------------------------------------------------------------------
    def architecture(self) -> dict:
        """The JSON-able description :func:`load` rebuilds the (untrained) model from."""
        return {
            "class": "Sequential",
            "input_shape": list(self.input_shape),
            "dtype": self.dtype_name,
            "loss": self.loss_name,
            "seed": self.seed,
            "layers": [{"type": type(layer).__name__, "config": layer.get_config()}
                       for layer in self.layers],
        }

    def save(self, path, *, include_optimizer: bool = True):
        """Write weights, buffers and optimizer state to ``path`` (safetensors, atomic).

        Tensor names: ``layers.{i}.{weight|bias|<buffer>}`` (e.g. ``layers.0.weight``, shape
        (out, in, kh, kw)) and ``optimizer.{i}.{param}.{slot}``
        (``optimizer.0.weight.momentum``); see :mod:`portacnn.checkpoint`. Returns the path.
        """
        self.require_built()
        opt = self.optimizer if include_optimizer else None
        description = {
            "model": self.architecture(),
            "optimizer": None if opt is None else {"config": opt.get_config(), "steps": opt.steps},
        }
        tensors = checkpoint.model_tensors(self.parameters(), self.buffers(), opt)
        return checkpoint.write(path, tensors, description)
