"""Finite-difference gradient checks, written against the array API like everything else.

    >>> from portacnn.gradcheck import check_layer
    >>> errors = check_layer(Conv2D(2, 3, in_channels=1, dtype="float64"), x)  # x float64
    >>> max(errors.values()) < 1e-6

Use float64: central differences with ``eps=1e-6`` are accurate to ~1e-9 there and useless in
float32.
"""

from __future__ import annotations

import array_api_extra as xpx

from .backends import namespace

__all__ = ["numerical_gradient", "relative_error", "check_layer"]


def numerical_gradient(fn, x, eps: float = 1e-6):
    """Central-difference gradient of the scalar ``fn(x)`` with respect to every element of x.

    ``fn`` takes an array shaped like ``x`` and returns a 0-d array or a float. ``x`` is not
    modified. Costs ``2 * x.size`` calls of ``fn``.
    """
    xp = namespace(x)
    flat = xp.reshape(x, (-1,))

    def shifted(i, value):          # a copy of x with element i set: x itself stays as it is
        return xp.reshape(xpx.at(flat, i).set(value, copy=True), tuple(x.shape))

    grad = []
    for i in range(flat.shape[0]):
        orig = float(flat[i])
        up, down = float(fn(shifted(i, orig + eps))), float(fn(shifted(i, orig - eps)))
        grad.append((up - down) / (2 * eps))
    return xp.reshape(xp.asarray(grad, dtype=x.dtype, device=x.device), tuple(x.shape))


def relative_error(a, b) -> float:
    """``max|a - b| / max(max|a|, max|b|, 1e-12)``: scale-free, 0 for identical arrays."""
    xp = namespace(a, b)
    scale = max(float(xp.max(xp.abs(a))), float(xp.max(xp.abs(b))), 1e-12)
    return float(xp.max(xp.abs(a - b))) / scale


def check_layer(layer, x, eps: float = 1e-6, seed: int = 0) -> dict:
    """Compare a layer's analytic gradients with finite differences.

    The scalar checked is ``L = sum(layer(x) * r)`` for a fixed random ``r``, so dL/dy = r.
    Returns ``{"input": err, "weight": err, ...}`` relative errors (see :func:`relative_error`).
    """
    xp = namespace(x)
    layer.train()
    y = layer.forward(x)
    r = layer.backend.rng(seed).normal(tuple(y.shape), dtype=y.dtype)   # built by forward
    dx = layer.backward(r)
    errors = {}

    def loss_of_input(xv):
        return xp.sum(layer.forward(xv) * r)

    if dx is not None:
        errors["input"] = relative_error(dx, numerical_gradient(loss_of_input, x, eps))
    analytic = {k: xp.asarray(g, copy=True) for k, g in layer.grads.items()}
    for param in layer.parameters():
        def loss_of_param(pv, param=param):
            saved = param.value
            param.value = pv
            try:
                return xp.sum(layer.forward(x) * r)
            finally:
                param.value = saved
        errors[param.key] = relative_error(analytic[param.key],
                                           numerical_gradient(loss_of_param, param.value, eps))
    return errors
