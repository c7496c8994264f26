"""Optimizers: SGD (momentum, Nesterov, weight decay), Adam and RMSprop.

The update rules are PyTorch's (``torch.optim``), so the same hyper-parameters mean the same
thing. Each optimizer keeps per-parameter state (momentum buffers, moments) on the device of
the parameters, created on the first step, and updates parameters in place.

    >>> opt = SGD(lr=0.02, momentum=0.9)
    >>> opt.step(model.parameters())   # [(name, params_dict, key, grads_dict), ...]
"""

from __future__ import annotations

import math

__all__ = ["Optimizer", "SGD", "Adam", "RMSprop", "get_optimizer", "OPTIMIZERS"]


class Optimizer:
    """Base class: subclasses implement ``_update(param, grad, state) -> None`` in place.

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
        """Apply one update to every ``(name, params, key, grads)`` from ``model.parameters()``."""
        self.steps += 1
        for name, params, key, grads in parameters:
            grad = grads.get(key)
            if grad is None:
                continue
            param = params[key]
            if self.weight_decay:
                grad = grad + self.weight_decay * param
            self._update(param, grad, self.state.setdefault(name, {}))

    def _update(self, param, grad, state: dict) -> None:
        raise NotImplementedError

    @staticmethod
    def _slot(state, name, like):
        if name not in state:
            state[name] = like * 0            # zeros of like's namespace, dtype and device
        return state[name]

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

    def _update(self, param, grad, state):
        if self.momentum:
            if "momentum" not in state:
                state["momentum"] = grad * 1       # PyTorch starts the buffer at the gradient
            else:
                buf = state["momentum"]
                buf *= self.momentum
                buf += grad
            buf = state["momentum"]
            grad = grad + self.momentum * buf if self.nesterov else buf
        param -= self.lr * grad

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

    def _update(self, param, grad, state):
        b1, b2 = self.betas
        m = self._slot(state, "exp_avg", param)
        v = self._slot(state, "exp_avg_sq", param)
        m *= b1
        m += (1 - b1) * grad
        v *= b2
        v += (1 - b2) * (grad * grad)
        t = self.steps
        step_size = self.lr / (1 - b1 ** t)
        denom = (v / (1 - b2 ** t)) ** 0.5 + self.eps
        param -= step_size * (m / denom)

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

    def _update(self, param, grad, state):
        v = self._slot(state, "square_avg", param)
        v *= self.alpha
        v += (1 - self.alpha) * (grad * grad)
        scaled = grad / (v ** 0.5 + self.eps)
        if self.momentum:
            buf = self._slot(state, "momentum_buffer", param)
            buf *= self.momentum
            buf += scaled
            scaled = buf
        param -= self.lr * scaled

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
