"""Optimizers: SGD (momentum, Nesterov, weight decay), Adam and RMSprop.

The update rules are PyTorch's (``torch.optim``), so the same hyper-parameters mean the same
thing. Each optimizer keeps per-parameter state (momentum buffers, moments) on the device of
the parameters, created on the first step. Updates are functional (``p.value = p.value - lr *
g``): new arrays replace the old, so they run on JAX, whose arrays are immutable, as on NumPy.

Where the backend's kernel set asks for it (``backend.kernels.fuse_updates``: every set but
the CPU's), one step
updates every parameter at once: the gradients are laid end to end in one 1-D array (one
``concat``), the update rule runs once on the flat arrays, and each parameter and state slot
becomes a view of the flat result (``reshape(flat[start:stop], shape)``). The next step finds
the values and slots still the views it made and reuses their flat arrays without a copy; a
parameter replaced in between (a checkpoint load, ``to``) is gathered again. On a GPU this is a
handful of kernel launches per step whatever the number of parameters (SGD with momentum: one
``concat`` and four arithmetic operations, instead of four per parameter). On the CPU each
parameter is updated by itself, the same rule on its own array, which stays in cache.

An optimizer belongs to the parameters of its first step (:meth:`Optimizer.bind`): its state
and step count are theirs, so another model's parameters are refused with the way to make a
fresh optimizer, rather than updated with the first model's momentum.

The rate, ``optimizer.learning_rate`` (or ``lr``), is a Python float read at each step: set
between steps (a schedule) it keeps the state and compiles nothing anew. ``global_clipnorm``
first scales the gradients by ``min(1, global_clipnorm / (n + 1e-6))``, ``n`` the 2-norm of
all of them together (PyTorch's ``clip_grad_norm_``), a 0-d device array; under data
parallelism the gradients are already summed, so every process clips alike.

    >>> opt = SGD(lr=0.02, momentum=0.9)
    >>> opt.step(model.parameters())   # [Parameter, ...]: .name, .value, .grad
    >>> opt.learning_rate = 0.002      # from the next step on
"""

from __future__ import annotations

import contextlib
import math
import weakref

from .backends import namespace
from .scalars import is_real, positive_real

__all__ = ["Optimizer", "SGD", "Adam", "RMSprop", "get_optimizer", "OPTIMIZERS"]


class Optimizer:
    """Base class: subclasses implement ``_update(value, grad, state) -> new value``, storing
    new slot arrays in ``state``.

    Attributes:
        learning_rate: the rate (``lr`` the same), read at each step: it may be set between.
        global_clipnorm: the global 2-norm the gradients are clipped to first, or None.
        state: ``{parameter name: {slot: array}}`` on the parameters' device.
        steps: number of ``step`` calls so far.
        state and steps belong to the parameters the optimizer is bound to (:meth:`bind`).
    """

    def __init__(self, lr: float, weight_decay: float = 0.0, *,
                 global_clipnorm: float | None = None):
        self.learning_rate = lr
        if not (is_real(weight_decay) and weight_decay >= 0):
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
        self.weight_decay = float(weight_decay)
        self.global_clipnorm = (None if global_clipnorm is None
                                else positive_real(global_clipnorm, "global_clipnorm"))
        self.state: dict[str, dict] = {}
        self.steps = 0
        self._flat: dict[tuple, tuple] = {}     # (names, slot) -> (flat array, its views)
        self._owners: dict[str, weakref.ref] = {}   # parameter name -> its layer, from bind

    @property
    def learning_rate(self) -> float:
        """The learning rate (Keras's name; ``lr`` is the same), read at each step."""
        return self._lr

    @learning_rate.setter
    def learning_rate(self, value: float) -> None:
        self._lr = positive_real(value, "learning rate")

    lr = learning_rate

    def bind(self, parameters) -> None:
        """Tie the optimizer to ``parameters`` (``model.parameters()``) if it is tied to none
        yet; otherwise raise ``RuntimeError`` unless each is one it is tied to (the same name
        of the same layer object, so moving the model with ``to`` keeps them). ``step`` binds
        to the parameters of the first step, a model to the optimizer it is given (``fit``,
        :func:`portacnn.load`)."""
        params = list(parameters)
        if not self._owners:
            self._owners = {p.name: weakref.ref(p.layer) for p in params}
            return
        for p in params:
            owner = self._owners.get(p.name)
            if owner is None or owner() is not p.layer:
                raise RuntimeError(
                    f"{self!r} already trains another model: its state (momentum, step count) "
                    f"belongs to that model's parameters, and {p.name} here is not one of them."
                    " Give each model its own optimizer: a new one, or "
                    "portacnn.optim.get_optimizer(optimizer.get_config()) for a fresh one with "
                    "the same settings")

    def step(self, parameters) -> None:
        """Apply one update to every :class:`~portacnn.layers.Parameter` (``model.parameters()``)
        that has a gradient (see the module docstring).

        Where the parameters' backend's kernel set has ``fuse_updates``, parameters that share
        a dtype and the same state slots (all of them after the first step) are updated
        together: one call of ``_update`` on 1-D arrays of ``sum(p.size)`` elements. Otherwise
        each parameter is one call on its own arrays. With ``global_clipnorm`` the gradients
        are clipped first (``p.grad`` itself is left as it is).
        """
        parameters = list(parameters)
        self.bind(parameters)
        self.steps += 1
        params = [p for p in parameters if p.grad is not None]
        if not params:
            return
        backend = getattr(params[0].layer, "backend", None)
        with backend.activate() if backend is not None else contextlib.nullcontext():
            if backend is None or backend.kernels.fuse_updates:
                self._step_fused(params)
                return
            scale = self._clip_scale([p.grad for p in params])
            for p in params:
                grad = p.grad if scale is None else p.grad * scale
                if self.weight_decay:
                    grad = grad + self.weight_decay * p.value
                p.value = self._update(p.value, grad, self.state.setdefault(p.name, {}))

    def _step_fused(self, params) -> None:
        # One update per group of parameters sharing a dtype and the same state slots.
        groups: dict[tuple, list] = {}
        for p in params:
            key = (p.value.dtype, tuple(sorted(self.state.get(p.name, ()))))
            groups.setdefault(key, []).append(p)
        cached = self._flat
        self._flat = {}             # filled again by this step: flat arrays no longer used go
        xp = namespace(*(p.grad for p in params))
        flat_grads = [_flat_of(xp, None, [p.grad for p in group]) for group in groups.values()]
        scale = self._clip_scale(flat_grads)
        for ((_, slots), group), grad in zip(groups.items(), flat_grads):
            self._step_together(group, tuple(p.name for p in group), slots, cached,
                                grad if scale is None else grad * scale)

    def _step_together(self, params, names: tuple, slots: tuple, cached: dict, grad) -> None:
        # One update of `params`: flat value, gradient and slots (N,) with N = sum of sizes.
        xp = namespace(grad)
        value = _flat_of(xp, cached.get((names, "value")), [p.value for p in params])
        if self.weight_decay:
            grad = grad + self.weight_decay * value
        state = {slot: _flat_of(xp, cached.get((names, slot)),
                                [self.state[p.name][slot] for p in params]) for slot in slots}
        new_value = self._update(value, grad, state)
        shapes = [tuple(p.value.shape) for p in params]
        for p, view in zip(params, self._unflatten(names, "value", new_value, shapes)):
            p.value = view
        for slot, flat in state.items():
            for p, view in zip(params, self._unflatten(names, slot, flat, shapes)):
                self.state.setdefault(p.name, {})[slot] = view

    def _clip_scale(self, grads: list):
        """The factor ``min(1, global_clipnorm / (norm + 1e-6))`` (PyTorch's
        ``clip_grad_norm_``) for the 2-norm of all of ``grads`` together, a 0-d device array;
        None without ``global_clipnorm``. One sum of squares per array (one in all when the
        update is fused)."""
        if self.global_clipnorm is None:
            return None
        xp = namespace(*grads)
        total = None
        for g in grads:
            squares = xp.sum(g * g)
            total = squares if total is None else total + squares
        return xp.clip(self.global_clipnorm / (xp.sqrt(total) + 1e-6), max=1.0)

    def _unflatten(self, names: tuple, key: str, flat, shapes: list) -> list:
        """Views ``reshape(flat[start:stop], shape)`` of a 1-D array, one per shape, remembered
        so that the next step can reuse ``flat`` (:func:`_flat_of`). A single parameter's array
        is its own "flat" array, of its own shape."""
        if len(shapes) == 1:
            return [flat]
        xp = namespace(flat)
        views, start = [], 0
        for shape in shapes:
            stop = start + math.prod(shape)
            views.append(xp.reshape(flat[start:stop], shape))
            start = stop
        self._flat[(names, key)] = (flat, views)
        return views

    def slot_names(self) -> tuple[str, ...]:
        """The names of the state slots this optimizer keeps per parameter (``state[name]``'s
        keys once it has stepped): what a checkpoint's ``optimizer.{i}.{key}.{slot}`` may be."""
        return ()

    def _update(self, value, grad, state: dict):
        """The update rule on 1-D arrays: return the new ``value``, storing new slot arrays in
        ``state`` (``{slot: array}``, empty at the first step)."""
        raise NotImplementedError

    @staticmethod
    def _slot(state, name, like):
        # The slot's current value: zeros of like's namespace, dtype and device at first.
        return state[name] if name in state else like * 0

    def to(self, backend) -> "Optimizer":
        """Move the state to another backend (with the model's ``to``)."""
        for slots in self.state.values():
            for k, v in slots.items():
                slots[k] = backend.asarray(v)
        self._flat.clear()
        return self

    def get_config(self) -> dict:
        """Hyper-parameters as JSON-able values (saved in checkpoints)."""
        config = {"name": type(self).__name__, "lr": self.lr, "weight_decay": self.weight_decay}
        if self.global_clipnorm is not None:
            config["global_clipnorm"] = self.global_clipnorm
        return config

    def __repr__(self) -> str:
        cfg = self.get_config()
        name = cfg.pop("name")
        return f"{name}({', '.join(f'{k}={v!r}' for k, v in cfg.items())})"


class SGD(Optimizer):
    """Stochastic gradient descent, PyTorch's formulation.

    ``g += wd * p``; with momentum ``v = mu * v + g`` and ``g = v`` (or ``g + mu * v`` with
    Nesterov); then ``p -= lr * g``.
    """

    def __init__(self, lr: float = 0.01, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0, *, global_clipnorm: float | None = None):
        super().__init__(lr, weight_decay, global_clipnorm=global_clipnorm)
        if not (is_real(momentum) and 0.0 <= momentum < 1.0):
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        if nesterov and momentum == 0:
            raise ValueError("Nesterov momentum needs momentum > 0")
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)

    def _update(self, value, grad, state):
        if self.momentum:
            # PyTorch starts the buffer at the first gradient.
            buf = self.momentum * state["momentum"] + grad if "momentum" in state else grad
            state["momentum"] = buf
            grad = grad + self.momentum * buf if self.nesterov else buf
        return value - self.lr * grad

    def slot_names(self):
        return ("momentum",) if self.momentum else ()

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "nesterov": self.nesterov}


class Adam(Optimizer):
    """Adam with bias correction (Kingma & Ba), PyTorch's formulation.

    ``m = b1 m + (1-b1) g``, ``v = b2 v + (1-b2) g^2``,
    ``p -= lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)``.
    """

    def __init__(self, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, *, global_clipnorm: float | None = None):
        super().__init__(lr, weight_decay, global_clipnorm=global_clipnorm)
        b1, b2 = betas
        if not all(is_real(b) and 0.0 <= b < 1.0 for b in (b1, b2)):
            raise ValueError(f"betas must be in [0, 1), got {betas!r}")
        self.betas = (float(b1), float(b2))
        self.eps = positive_real(eps, "eps")

    def _update(self, value, grad, state):
        b1, b2 = self.betas
        m = b1 * self._slot(state, "exp_avg", value) + (1 - b1) * grad
        v = b2 * self._slot(state, "exp_avg_sq", value) + (1 - b2) * (grad * grad)
        state["exp_avg"], state["exp_avg_sq"] = m, v
        t = self.steps
        step_size = self.lr / (1 - b1 ** t)
        denom = (v / (1 - b2 ** t)) ** 0.5 + self.eps
        return value - step_size * (m / denom)

    def slot_names(self):
        return ("exp_avg", "exp_avg_sq")

    def get_config(self):
        return {**super().get_config(), "betas": list(self.betas), "eps": self.eps}


class RMSprop(Optimizer):
    """RMSprop, PyTorch's formulation: ``v = a v + (1-a) g^2``; ``p -= lr g / (sqrt(v) + eps)``
    (with momentum: ``buf = mu buf + g / (sqrt(v) + eps)``, ``p -= lr buf``)."""

    def __init__(self, lr: float = 0.01, alpha: float = 0.99, eps: float = 1e-8,
                 momentum: float = 0.0, weight_decay: float = 0.0, *,
                 global_clipnorm: float | None = None):
        super().__init__(lr, weight_decay, global_clipnorm=global_clipnorm)
        if not (is_real(alpha) and 0.0 <= alpha < 1.0):
            raise ValueError(f"alpha must be in [0, 1), got {alpha!r}")
        if not (is_real(momentum) and 0.0 <= momentum < 1.0):
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        self.alpha = float(alpha)
        self.eps = positive_real(eps, "eps")
        self.momentum = float(momentum)

    def _update(self, value, grad, state):
        v = self.alpha * self._slot(state, "square_avg", value) + (1 - self.alpha) * (grad * grad)
        state["square_avg"] = v
        scaled = grad / (v ** 0.5 + self.eps)
        if self.momentum:
            scaled = self.momentum * self._slot(state, "momentum_buffer", value) + scaled
            state["momentum_buffer"] = scaled
        return value - self.lr * scaled

    def slot_names(self):
        return ("square_avg", "momentum_buffer") if self.momentum else ("square_avg",)

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha, "eps": self.eps,
                "momentum": self.momentum}


def _flat_of(xp, cached, arrays: list):
    """The 1-D concatenation of ``arrays``: ``cached`` (a ``(flat, views)`` pair from the last
    step) when every array is still the view of it that the last step handed out, else one
    ``concat``. A single array is returned as it is."""
    if len(arrays) == 1:
        return arrays[0]
    if cached is not None and all(a is v for a, v in zip(arrays, cached[1])):
        return cached[0]
    return xp.concat([xp.reshape(a, (-1,)) for a in arrays])


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "rmsprop": RMSprop}


def get_optimizer(spec, **kwargs) -> Optimizer:
    """An optimizer from a name (``"sgd"``, ``"adam"``, ``"rmsprop"``), a config dict, or as is."""
    if isinstance(spec, Optimizer):
        return spec
    if isinstance(spec, dict):
        cfg = dict(spec)
        name = cfg.pop("name")
        if "betas" in cfg:
            cfg["betas"] = tuple(cfg["betas"])
        return get_optimizer(name, **cfg)
    key = str(spec).lower()
    if key not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {spec!r}; choose one of {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[key](**kwargs)
