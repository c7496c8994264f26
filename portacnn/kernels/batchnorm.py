"""Batch normalisation over the batch (and, for images, the spatial) axes, per channel.

    x_hat = (x - mean) / sqrt(var + eps)         y = gamma * x_hat + beta

In training, ``mean`` and ``var`` (biased) come from the batch: over (N, H, W) for (N, C, H, W)
input, over N for (N, F). Running statistics follow PyTorch: ``running = (1 - momentum) *
running + momentum * batch``, with the *unbiased* batch variance. In eval mode the running
statistics replace the batch ones.

Backward (training), with M elements per channel and ``g = dy * gamma``:

    dx = (g - mean(g) - x_hat * mean(g * x_hat)) / sqrt(var + eps)

which needs no second pass over x and stays stable for large M.
"""

from __future__ import annotations

from typing import NamedTuple

from ..namespace import namespace

__all__ = ["batchnorm_forward", "batchnorm_backward", "BatchNormCache"]


class BatchNormCache(NamedTuple):
    x_hat: object
    inv_std: object      # broadcastable to x
    gamma: object        # broadcastable to x
    axes: tuple
    training: bool


def _axes_and_shape(x, num_features):
    if x.ndim == 4:
        axes, bshape = (0, 2, 3), (1, num_features, 1, 1)
    elif x.ndim == 2:
        axes, bshape = (0,), (1, num_features)
    else:
        raise ValueError(f"batch norm takes (N, C, H, W) or (N, F) input, got shape {tuple(x.shape)}")
    if x.shape[1] != num_features:
        raise ValueError(f"batch norm was built for {num_features} channels/features, got "
                         f"{x.shape[1]} (input shape {tuple(x.shape)})")
    return axes, bshape


def batchnorm_forward(x, gamma, beta, running_mean, running_var, *, training: bool,
                      momentum: float = 0.1, eps: float = 1e-5):
    """Normalise ``x`` per channel. Returns ``(y, cache, new_running_mean, new_running_var)``.

    ``gamma``, ``beta``, ``running_mean``, ``running_var`` have shape (C,). In eval mode the
    running statistics are returned unchanged.
    """
    xp = namespace(x, gamma, beta, running_mean, running_var)
    c = gamma.shape[0]
    axes, bshape = _axes_and_shape(x, c)
    if training:
        count = 1
        for a in axes:
            count *= x.shape[a]
        if count < 2:
            raise ValueError("batch norm in training needs more than one value per channel "
                             f"(input shape {tuple(x.shape)}): use a larger batch or eval mode")
        mean = xp.mean(x, axis=axes, keepdims=True)
        centred = x - mean
        var = xp.mean(centred * centred, axis=axes, keepdims=True)
        inv_std = 1.0 / xp.sqrt(var + eps)
        x_hat = centred * inv_std
        new_mean = (1 - momentum) * running_mean + momentum * xp.reshape(mean, (c,))
        unbiased = xp.reshape(var, (c,)) * (count / (count - 1))
        new_var = (1 - momentum) * running_var + momentum * unbiased
    else:
        inv_std = 1.0 / xp.sqrt(xp.reshape(running_var, bshape) + eps)
        x_hat = (x - xp.reshape(running_mean, bshape)) * inv_std
        new_mean, new_var = running_mean, running_var
    g = xp.reshape(gamma, bshape)
    y = x_hat * g + xp.reshape(beta, bshape)
    return y, BatchNormCache(x_hat, inv_std, g, axes, training), new_mean, new_var


def batchnorm_backward(dy, cache: BatchNormCache):
    """Gradients of :func:`batchnorm_forward`: ``(dx, dgamma, dbeta)``."""
    xp = namespace(dy)
    x_hat, inv_std, g, axes, training = cache
    dgamma = xp.sum(dy * x_hat, axis=axes)
    dbeta = xp.sum(dy, axis=axes)
    gy = dy * g
    if not training:
        return gy * inv_std, dgamma, dbeta
    dx = (gy - xp.mean(gy, axis=axes, keepdims=True)
          - x_hat * xp.mean(gy * x_hat, axis=axes, keepdims=True)) * inv_std
    return dx, dgamma, dbeta
