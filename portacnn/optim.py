"""Optimizers: SGD (momentum, Nesterov, weight decay), Adam and RMSprop.

The update rules are PyTorch's (``torch.optim``), so the same hyper-parameters mean the same
thing. Each optimizer keeps per-parameter state (momentum buffers, moments) on the device of
the parameters, created on the first step. Updates are functional (``p.value = p.value - lr *
g``): new arrays replace the old, so they run on JAX, whose arrays are immutable, as on NumPy.

    >>> opt = SGD(lr=0.02, momentum=0.9)
    >>> opt.step(model.parameters())   # [Parameter, ...]: .name, .value, .grad
"""

from __future__ import annotations

import math

__all__ = ["Optimizer", "SGD", "Adam", "RMSprop", "get_optimizer", "OPTIMIZERS"]


class Optimizer:
    """Base class: subclasses implement ``_update(value, grad, state) -> new value``, storing
    new slot arrays in ``state``.

    Attributes:
        lr: learning rate (may be changed between steps).
        state: ``{parameter name: {slot: array}}`` on the parameters' device.
        steps: number of ``step`` calls so far.
    """

    def __init__(self, lr: float, weight_decay: float = 0.0):
        if not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
            raise ValueError(f"learning rate must be a positive number, got {lr!r}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.state: dict[str, dict] = {}
        self.steps = 0

    def step(self, parameters) -> None:
        """Apply one update to every :class:`~portacnn.layers.Parameter` (``model.parameters()``)
        that has a gradient."""
        self.steps += 1
        for p in parameters:
            grad = p.grad
            if grad is None:
                continue
            if self.weight_decay:
                grad = grad + self.weight_decay * p.value
            p.value = self._update(p.value, grad, self.state.setdefault(p.name, {}))

    def _update(self, value, grad, state: dict):
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
        return self

    def get_config(self) -> dict:
        """Hyper-parameters as JSON-able values (saved in checkpoints)."""
        return {"name": type(self).__name__, "lr": self.lr, "weight_decay": self.weight_decay}

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
                 weight_decay: float = 0.0):
        super().__init__(lr, weight_decay)
        if not 0.0 <= momentum < 1.0:
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

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "nesterov": self.nesterov}


class Adam(Optimizer):
    """Adam with bias correction (Kingma & Ba), PyTorch's formulation.

    ``m = b1 m + (1-b1) g``, ``v = b2 v + (1-b2) g^2``,
    ``p -= lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)``.
    """

    def __init__(self, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(lr, weight_decay)
        b1, b2 = betas
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise ValueError(f"betas must be in [0, 1), got {betas!r}")
        self.betas = (float(b1), float(b2))
        self.eps = float(eps)

    def _update(self, value, grad, state):
        b1, b2 = self.betas
        m = b1 * self._slot(state, "exp_avg", value) + (1 - b1) * grad
        v = b2 * self._slot(state, "exp_avg_sq", value) + (1 - b2) * (grad * grad)
        state["exp_avg"], state["exp_avg_sq"] = m, v
        t = self.steps
        step_size = self.lr / (1 - b1 ** t)
        denom = (v / (1 - b2 ** t)) ** 0.5 + self.eps
        return value - step_size * (m / denom)

    def get_config(self):
        return {**super().get_config(), "betas": list(self.betas), "eps": self.eps}


class RMSprop(Optimizer):
    """RMSprop, PyTorch's formulation: ``v = a v + (1-a) g^2``; ``p -= lr g / (sqrt(v) + eps)``
    (with momentum: ``buf = mu buf + g / (sqrt(v) + eps)``, ``p -= lr buf``)."""

    def __init__(self, lr: float = 0.01, alpha: float = 0.99, eps: float = 1e-8,
                 momentum: float = 0.0, weight_decay: float = 0.0):
        super().__init__(lr, weight_decay)
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"alpha must be in [0, 1), got {alpha!r}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        self.alpha = float(alpha)
        self.eps = float(eps)
        self.momentum = float(momentum)

    def _update(self, value, grad, state):
        v = self.alpha * self._slot(state, "square_avg", value) + (1 - self.alpha) * (grad * grad)
        state["square_avg"] = v
        scaled = grad / (v ** 0.5 + self.eps)
        if self.momentum:
            scaled = self.momentum * self._slot(state, "momentum_buffer", value) + scaled
            state["momentum_buffer"] = scaled
        return value - self.lr * scaled

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha, "eps": self.eps,
                "momentum": self.momentum}


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
