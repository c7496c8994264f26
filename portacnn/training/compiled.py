"""Compiled steps on JAX: a whole training step, or the inference forward, traced by
``jax.jit`` into one program from the same eager code (``fit(..., compile=True)``).

Layers hold their arrays as attributes and the optimizer holds its state, but a traced function
can keep nothing it computes. So the function traced is one of explicit inputs and outputs:
it puts its inputs (tracers) where the eager code reads them, each parameter's and buffer's
``value``, the optimizer's state, step count and rate, each dropout layer's mask; runs the
eager step (:func:`~.loop.train_step`: forward, loss, backward, ``optimizer.step``); returns the
new values; and puts every attribute it touched back as it was (:func:`_kept`), so no tracer
outlives the trace. After each call the outputs are written into the model and the optimizer.
Nothing a step changes is a constant of the program: the rate a schedule sets and Adam's step
count are inputs, and the dropout masks are drawn by each layer's generator on the host, as in
eager training (the same masks, step for step), and passed in. Settings that are Python
numbers (momentum, weight decay, clipping, dropout's p) are read when a step is traced: a
``fit`` call traces anew. A new batch size (the last, short batch) traces once more; the
first call of each shape pays the compilation.

The program is made by the backend's ``jit`` (:attr:`portacnn.backends.Backend.jit`: JAX's
``jax.jit``); other backends have none and refuse ``compile=True``.
"""

from __future__ import annotations

import contextlib
import weakref

from ..layers import Dropout
from .replicas import OneProcess

__all__ = ["CompiledTraining", "compiled_forward", "check_compilable"]


def check_compilable(model, replicas=None) -> None:
    """Raise ``ValueError`` unless ``model`` can run compiled steps: on a backend with a ``jit``
    (JAX), in one process."""
    if model.backend.jit is None:
        raise ValueError(
            f"compile=True traces the step with jax.jit, so the model must be on JAX, but it is "
            f"on {model.backend.name}, which runs eagerly only: make it with device='jax' (pip "
            "install jax) or move it with model.to('jax'); or leave compile=False (eager, "
            "every backend)")
    if replicas is not None and not isinstance(replicas, OneProcess):
        raise ValueError("compile=True runs in one process: data parallelism sums gradients "
                         "between steps on the host; train it with compile=False")


class _GivenMask:
    """Stands in for a dropout layer's generator while a step is traced: the mask it gives is
    the step's input."""

    def __init__(self, mask):
        self.mask = mask

    def bernoulli(self, shape, keep, dtype):
        return self.mask


@contextlib.contextmanager
def _kept(objects):
    """Run the block, then put back every attribute of ``objects`` (and the contents of each
    dict attribute) as it was before it: what a trace assigns there are tracers."""
    saved = [(obj, {key: (value, dict(value) if isinstance(value, dict) else None)
                    for key, value in vars(obj).items()}) for obj in objects]
    try:
        yield
    finally:
        for obj, attributes in saved:
            state = vars(obj)
            state.clear()
            for key, (value, contents) in attributes.items():
                if contents is not None:
                    value.clear()
                    value.update(contents)
                state[key] = value


def _dropouts(model) -> list:
    """The dropout layers that draw a mask in the model's current mode."""
    return [layer for layer in model.layers
            if isinstance(layer, Dropout) and layer.training and layer.p > 0.0]


class CompiledTraining:
    """``step(x, y) -> (loss, logits)``: one training step of ``model`` with ``optimizer``,
    ``eager_step(model, x, y, optimizer)`` traced once per batch shape by ``jax.jit``.

    Inputs of the program: the parameters, the buffers (batch norm's running statistics), the
    optimizer's state (its slots started at zeros, which gives the same update as starting them
    at the first gradient), its step count and rate as 0-d arrays, one dropout mask per dropout
    layer, and the batch. Outputs: the new parameters, buffers and state, the loss and logits.
    """

    def __init__(self, model, optimizer, eager_step):
        check_compilable(model)
        self.model, self.optimizer = model, optimizer
        self._eager_step = eager_step
        self._program = model.backend.jit(self._traced)

    def _traced(self, params, buffers, state, steps, rate, masks, x, y):
        model, optimizer = self.model, self.optimizer
        dropouts = _dropouts(model)
        with _kept([model, optimizer, *model.layers]):
            for p, value in zip(model.parameters(), params):
                p.value = value
            for b, value in zip(model.buffers(), buffers):
                b.value = value
            optimizer.state = {name: dict(slots) for name, slots in state.items()}
            optimizer._flat = {}
            optimizer.steps, optimizer._lr = steps, rate
            for layer, mask in zip(dropouts, masks):
                layer.rng = _GivenMask(mask)
            loss, logits = self._eager_step(model, x, y, optimizer)
            return ([p.value for p in model.parameters()], [b.value for b in model.buffers()],
                    {name: dict(slots) for name, slots in optimizer.state.items()},
                    loss, logits)

    def __call__(self, x, y):
        model, optimizer = self.model, self.optimizer
        backend = model.backend
        dtype = backend.dtype(model.dtype_name)
        params = model.parameters()
        optimizer.bind(params)
        for p in params:                    # the slots the first update would make, at zeros
            slots = optimizer.state.setdefault(p.name, {})
            for slot in optimizer.slot_names():
                if slot not in slots:
                    slots[slot] = p.value * 0
        masks = [layer.rng.bernoulli((x.shape[0], *layer.input_shape), 1.0 - layer.p, dtype)
                 for layer in _dropouts(model)]
        count = backend.asarray(float(optimizer.steps), dtype=dtype)
        rate = backend.asarray(float(optimizer.learning_rate), dtype=dtype)
        new_params, new_buffers, new_state, loss, logits = self._program(
            [p.value for p in params], [b.value for b in model.buffers()], optimizer.state,
            count, rate, masks, x, y)
        for p, value in zip(params, new_params):
            p.value = value
            p.grad = None
        for b, value in zip(model.buffers(), new_buffers):
            b.value = value
        optimizer.state = new_state
        optimizer._flat = {}
        optimizer.steps += 1
        return loss, logits


_FORWARDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()   # model -> its program


def compiled_forward(model):
    """``forward(x) -> outputs``: the model's inference forward (eval mode, as ``evaluate``
    and ``predict`` run it) traced by ``jax.jit``, with the parameters and buffers as inputs of
    the program. One program per model, made at its first call (so each epoch's validation
    reuses it); a batch of a new shape traces once more."""
    check_compilable(model)
    program = _FORWARDS.get(model)
    if program is None:
        ref = weakref.ref(model)        # the program must not keep its key alive

        def traced(params, buffers, x):
            model = ref()
            with _kept([model, *model.layers]):
                for p, value in zip(model.parameters(), params):
                    p.value = value
                for b, value in zip(model.buffers(), buffers):
                    b.value = value
                return model.forward(x)

        program = _FORWARDS[model] = model.backend.jit(traced)

    def forward(x):
        return program([p.value for p in model.parameters()],
                       [b.value for b in model.buffers()], x)

    return forward
