"""Batch normalisation over the batch (and, for images, the spatial) axes, per channel.

    x_hat = (x - mean) / sqrt(var + eps)         y = gamma * x_hat + beta

In training, ``mean`` and ``var`` (biased) come from the batch: over (N, H, W) for (N, C, H, W)
input, over N for (N, F). Running statistics follow PyTorch: ``running = (1 - momentum) *
running + momentum * batch``, with the *unbiased* batch variance. In eval mode the running
statistics replace the batch ones.

Backward (training), with M elements per channel and ``g = dy * gamma``:

    dx = (g - mean(g) - x_hat * mean(g * x_hat)) / sqrt(var + eps)

which needs no second pass over x and stays stable for large M.

**Over several processes** (data parallelism), ``gather`` makes the batch the rows of every
process, so that R processes normalise as one process does on the whole batch. ``gather`` takes
this process's per-channel statistics, an array (k, C), and returns every process's, (R, k, C)
in rank order. Forward gathers (count, mean, M2) of the process's rows, M2 the sum of squared
deviations from their own mean, and combines them as Chan et al. (1979) do: with n = Σ n_r,

    mean = Σ n_r mean_r / n        M2 = Σ (M2_r + n_r (mean_r - mean)²)        var = M2 / n

(differences only: no sum of squares to cancel). Backward gathers the sums of ``g`` and
``g * x_hat`` for the two means of dx. Two gathers of 2-3 values a channel per layer and step.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from array_api_compat import device as device_of

from ..namespace import namespace

__all__ = ["batchnorm_forward", "batchnorm_backward", "BatchNormCache"]


class BatchNormCache(NamedTuple):
    x_hat: object
    inv_std: object      # broadcastable to x
    gamma: object        # broadcastable to x
    axes: tuple
    training: bool
    gather: object = None    # the forward's ``gather`` (None: this process's rows alone)
    count: object = None     # with ``gather``: the values a channel over every process, (C,)


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


def _too_few(count, x):
    if count < 2:
        raise ValueError("batch norm in training needs more than one value per channel "
                         f"(input shape {tuple(x.shape)}): use a larger batch or eval mode")


def batchnorm_forward(x, gamma, beta, running_mean, running_var, *, training: bool,
                      momentum: float = 0.1, eps: float = 1e-5, gather=None):
    """Normalise ``x`` per channel. Returns ``(y, cache, new_running_mean, new_running_var)``.

    ``gamma``, ``beta``, ``running_mean``, ``running_var`` have shape (C,). In eval mode the
    running statistics are returned unchanged. ``gather`` (training only): every process's
    per-channel statistics from this one's, (k, C) -> (R, k, C), to normalise over the rows of
    every process (see the module docstring); None: over ``x`` alone.
    """
    xp = namespace(x, gamma, beta, running_mean, running_var)
    c = gamma.shape[0]
    axes, bshape = _axes_and_shape(x, c)
    n = None                            # with gather: the values a channel over every process
    if not training:
        inv_std = 1.0 / xp.sqrt(xp.reshape(running_var, bshape) + eps)
        x_hat = (x - xp.reshape(running_mean, bshape)) * inv_std
        new_mean, new_var = running_mean, running_var
    else:
        count = math.prod(x.shape[a] for a in axes)
        if gather is None:
            _too_few(count, x)
            mean = xp.mean(x, axis=axes, keepdims=True)
            centred = x - mean
            var = xp.reshape(xp.mean(centred * centred, axis=axes, keepdims=True), (c,))
            unbiased = var * (count / (count - 1))
        else:
            mean, centred, var, n = _gathered_statistics(x, axes, bshape, count, gather)
            _too_few(float(n[0]), x)
            unbiased = var * (n / (n - 1))
        inv_std = 1.0 / xp.sqrt(xp.reshape(var, bshape) + eps)
        x_hat = centred * inv_std
        new_mean = (1 - momentum) * running_mean + momentum * xp.reshape(mean, (c,))
        new_var = (1 - momentum) * running_var + momentum * unbiased
    g = xp.reshape(gamma, bshape)
    y = x_hat * g + xp.reshape(beta, bshape)
    cache = BatchNormCache(x_hat, inv_std, g, axes, training, gather if training else None, n)
    return y, cache, new_mean, new_var


def _gathered_statistics(x, axes, bshape, count, gather):
    """Mean (broadcastable to x), ``x - mean``, biased variance (C,) and value count (C,) over
    the rows of every process: Chan's combination of each process's (count, mean, M2)."""
    xp = namespace(x)
    c = bshape[1]
    local_mean = xp.sum(x, axis=axes, keepdims=True) / max(count, 1)   # 0 for no rows
    local_centred = x - local_mean
    m2 = xp.sum(local_centred * local_centred, axis=axes)
    counts = xp.full((c,), float(count), dtype=x.dtype, device=device_of(x))
    everyone = gather(xp.stack([counts, xp.reshape(local_mean, (c,)), m2]))    # (R, 3, C)
    n_r, mean_r, m2_r = everyone[:, 0, :], everyone[:, 1, :], everyone[:, 2, :]
    n = xp.sum(n_r, axis=0)
    mean = xp.sum(n_r * mean_r, axis=0) / n
    spread = mean_r - mean
    var = xp.sum(m2_r + n_r * spread * spread, axis=0) / n
    mean = xp.reshape(mean, bshape)
    return mean, x - mean, var, n


def batchnorm_backward(dy, cache: BatchNormCache):
    """Gradients of :func:`batchnorm_forward`: ``(dx, dgamma, dbeta)``."""
    xp = namespace(dy)
    x_hat, inv_std, g, axes, training, gather, n = cache
    dgamma = xp.sum(dy * x_hat, axis=axes)
    dbeta = xp.sum(dy, axis=axes)
    gy = dy * g
    if not training:
        return gy * inv_std, dgamma, dbeta
    if gather is None:
        mean_gy = xp.mean(gy, axis=axes, keepdims=True)
        mean_gy_xhat = xp.mean(gy * x_hat, axis=axes, keepdims=True)
    else:                               # the means over the rows of every process
        bshape = tuple(inv_std.shape)
        local = xp.stack([xp.sum(gy, axis=axes), xp.sum(gy * x_hat, axis=axes)])   # (2, C)
        total = xp.sum(gather(local), axis=0) / n
        mean_gy = xp.reshape(total[0, :], bshape)
        mean_gy_xhat = xp.reshape(total[1, :], bshape)
    dx = (gy - mean_gy - x_hat * mean_gy_xhat) * inv_std
    return dx, dgamma, dbeta
