"""What every model shares, whatever the shape of its network: :class:`ModelBase`, the base
class of :class:`~.sequential.Sequential` (layers in order) and :class:`~.graph.Model`
(layers in a graph).

It holds the device, dtype, seed, loss and optimizer, the parameters and buffers made once at
build, the modes, moves between devices, the input check, the summary, ``save`` and the
training methods (which hand the model to :mod:`portacnn.training`). A subclass supplies the
network: ``layers`` (each layer once), ``build_for`` / ``require_built``, ``forward`` /
``backward``, ``activations``, ``architecture`` and the rows of its summary.
"""

from __future__ import annotations

import sys

from .. import checkpoint, training
from ..backends import Backend, get_backend
from ..layers import Buffer, Layer, Parameter
from ..optim import Optimizer
from ..scalars import seed_or_none
from . import onnx_export
from .summary import summary_text

__all__ = ["ModelBase"]


class ModelBase:
    """The plumbing of a model (see the module docstring). Subclasses set ``layers``,
    ``input_shape`` and ``output_shape`` (per sample; ``output_shape`` None until built) and
    call :meth:`_made` once their layers are built."""

    def __init__(self, *, device=None, dtype: str = "float32", seed: int | None = 0,
                 loss: str = "cross_entropy"):
        if loss not in training.LOSSES:
            raise ValueError(f"unknown loss {loss!r}; choose one of {', '.join(training.LOSSES)}")
        if dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
        self.layers: list[Layer] = []
        self.backend: Backend = get_backend(device)
        self.dtype_name = dtype
        self.seed = seed_or_none(seed)
        self.loss_name = loss
        self.input_shape = None
        self._optimizer: Optimizer | None = None
        self.training = True
        self.output_shape = None              # per-sample output shape, set by build
        self._parameters: tuple[Parameter, ...] = ()    # made once, by build
        self._buffers: tuple[Buffer, ...] = ()
        self._forward_mode = None             # "train" / "eval": the mode of the last forward

    # --- construction ---------------------------------------------------------------------
    def _check_layer(self, layer) -> None:
        """Raise unless ``layer`` is a portacnn layer whose requested dtype is the model's."""
        if not isinstance(layer, Layer):
            raise TypeError(f"{type(self).__name__} takes portacnn layers, got "
                            f"{type(layer).__name__}")
        if layer.requested_dtype not in (None, self.dtype_name):
            raise ValueError(
                f"{layer.name} was made with dtype='{layer.requested_dtype}' but the model is "
                f"{self.dtype_name}: one model computes in one dtype; pass "
                f"dtype='{layer.requested_dtype}' to {type(self).__name__} (its layers follow "
                "it) or drop the layer's dtype")

    @property
    def built(self) -> bool:
        return self.output_shape is not None

    def _build_layer(self, layer: Layer, input_shape, rng) -> tuple:
        """Build ``layer`` for per-sample ``input_shape`` (a list of shapes for a merging
        layer) on the model's device, drawing its weights from ``rng`` unless it has a seed
        of its own; a layer already built is adopted (:meth:`_adopt`). Returns its output
        shape."""
        if layer.built:
            return self._adopt(layer, input_shape)
        layer.dtype_name = self.dtype_name
        return layer.build(input_shape, self.backend,
                           rng if getattr(layer, "seed", None) is None else None)

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

    def _made(self, input_shape: tuple, output_shape: tuple) -> None:
        """Record a finished build: the shapes, and the ``Parameter`` / ``Buffer`` objects of
        every layer, named ``"{layer index}.{key}"``."""
        self.input_shape = input_shape
        self._parameters = tuple(p for i, layer in enumerate(self.layers)
                                 for p in layer.parameters(f"{i}."))
        self._buffers = tuple(b for i, layer in enumerate(self.layers)
                              for b in layer.buffer_slots(f"{i}."))
        self.output_shape = output_shape

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

    # --- modes and devices ----------------------------------------------------------------
    def train(self, mode: bool = True):
        """Training mode (dropout active, caches kept for backward)."""
        self.training = mode
        for layer in self.layers:
            layer.train(mode)
        return self

    def eval(self):
        """Inference mode: dropout is the identity and no backward caches are kept."""
        return self.train(False)

    def to(self, device):
        """Move parameters, buffers and optimizer state to another device or backend."""
        backend = get_backend(device)
        for layer in self.layers:
            layer.to(backend)
        if self.optimizer is not None:
            self.optimizer.to(backend)
        self.backend = backend
        return self

    # --- forward / backward ---------------------------------------------------------------
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

    def _check_backward(self) -> None:
        """Raise ``RuntimeError`` unless the last forward ran in training mode (which keeps
        the caches backward reads)."""
        if self._forward_mode != "train":
            name = type(self).__name__
            raise RuntimeError(
                (f"{name}.backward called before forward" if self._forward_mode is None else
                 f"{name}.backward called after a forward in eval mode, which keeps no caches")
                + ": call model.train(), then model.forward(x), then backward")

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
            compile: on a JAX model, trace each training step (forward, loss, backward,
                update) into one program with ``jax.jit`` (:mod:`portacnn.training.compiled`);
                the same numbers as eager training, without a dispatch per operation.
            threads: BLAS threads while training. By default the cores the machine's load
                leaves idle (:func:`portacnn.threads.default_threads`), unless the BLAS pools
                are already capped below the core count (``threadpoolctl``, the command line),
                which is then left alone; one a process under data parallelism.

        Returns:
            :class:`~portacnn.training.History` with per-epoch loss, accuracy, val_loss,
            val_accuracy, seconds and images_per_s.

        Raises:
            FloatingPointError: the loss became NaN or infinite (training diverged); raised at
                the end of that epoch at the latest, naming it.
        """
        return training.fit(self, x, y, epochs, batch_size, optimizer, **kwargs)

    def evaluate(self, x, y, batch_size: int = 256, *, compile: bool = False):
        """Mean loss and accuracy on ``(x, y)`` in eval mode: ``(loss, accuracy)`` (accuracy is
        None for the MSE loss). At most ``backend.kernels.infer_chunk`` images go through at once.
        ``compile=True`` traces the forward with ``jax.jit`` (a model on JAX)."""
        return training.evaluate(self, x, y, batch_size, compile=compile)

    def predict(self, x, batch_size: int = 256, *, compile: bool = False):
        """Class probabilities (softmax of the logits) for ``x`` (N, *input_shape), in eval
        mode: an (N, classes) array on the model's device (``model.backend.to_numpy`` copies it
        to the host); with the MSE loss, the raw outputs. ``compile=True`` traces the forward
        with ``jax.jit`` (a model on JAX)."""
        return training.predict(self, x, batch_size, compile=compile)

    # --- persistence ----------------------------------------------------------------------
    def export_onnx(self, path, *, batch: int | None = None):
        """Write the inference forward to ``path`` as an ONNX model any ONNX runtime serves;
        returns the path. Input ``"input"``, (N, *input_shape) in the model's dtype, with a
        symbolic batch size ``N`` unless ``batch`` fixes it; output what :meth:`predict`
        returns, ``"probabilities"`` (N, classes) (``"outputs"`` with the MSE loss). Weights
        are the graph's initializers. Traced on ``ndonnx`` arrays (``pip install
        "portacnn[onnx]"``), no per-layer converter (:mod:`.onnx_export`); a layer that
        cannot be traced raises :class:`~.onnx_export.OnnxExportError` naming it, and nothing
        is written."""
        return onnx_export.export_onnx(self, path, batch=batch)

    def _layer_descriptions(self) -> list[dict]:
        """Each layer's type and configuration, as :meth:`architecture` stores them."""
        return [{"type": type(layer).__name__, "config": layer.get_config()}
                for layer in self.layers]

    def save(self, path, *, include_optimizer: bool = True):
        """Write weights, buffers and optimizer state to ``path`` (safetensors, atomic), with
        the architecture (:meth:`architecture`) :func:`portacnn.load` rebuilds the model from.

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
