"""Naive loop implementations, straight from the definitions: readable, slow, and the test
oracles for the fast kernels in :mod:`portacnn.kernels`.

These run on host NumPy arrays only (they index one pixel at a time) and work out their own
padding and output sizes, so they share no code with the kernels they check. Loops name what
they walk: ``n`` sample, ``f`` filter, ``c`` channel, ``i, j`` output pixel, ``u, v`` kernel tap.
"""

from __future__ import annotations

import math

import numpy as np

from .scalars import is_int

__all__ = ["pads", "conv2d", "conv2d_backward", "im2col", "max_pool2d", "max_pool2d_backward",
           "min_pool2d", "min_pool2d_backward", "avg_pool2d", "avg_pool2d_backward",
           "global_avg_pool2d", "global_avg_pool2d_backward", "dense", "dense_backward",
           "softmax_cross_entropy", "mse", "upsample_nearest", "upsample_nearest_backward",
           "batchnorm_train", "pad_replicate", "random_crop_flip", "add", "concatenate",
           "concatenate_backward"]


def _two(v):
    return (int(v), int(v)) if is_int(v) else tuple(int(i) for i in v)


def pads(size, k, s, padding):
    """(before, after) padding of one axis. ``"same"``: output ceil(size / s), extra at the end."""
    if padding == "valid":
        return 0, 0
    if padding == "same":
        out = -(-size // s)
        total = max((out - 1) * s + k - size, 0)
        return total // 2, total - total // 2
    return padding, padding


def pad_replicate(x, top, bottom, left, right):
    """Pad by repeating edge pixels, one output pixel at a time: the nearest in-range pixel."""
    n, c, h, w = x.shape
    out = np.zeros((n, c, h + top + bottom, w + left + right), dtype=x.dtype)
    for i in range(out.shape[2]):
        for j in range(out.shape[3]):
            out[:, :, i, j] = x[:, :, min(max(i - top, 0), h - 1), min(max(j - left, 0), w - 1)]
    return out


def _padded(x, kh, kw, stride, padding, fill=0.0, mode="zeros"):
    sh, sw = _two(stride)
    ph, pw = (padding, padding) if isinstance(padding, str) else _two(padding)
    n, c, h, w = x.shape
    top, bottom = pads(h, kh, sh, ph)
    left, right = pads(w, kw, sw, pw)
    if mode == "replicate":
        xp = pad_replicate(x, top, bottom, left, right)
    else:
        xp = np.full((n, c, h + top + bottom, w + left + right), fill, dtype=x.dtype)
        xp[:, :, top:top + h, left:left + w] = x
    oh = (h + top + bottom - kh) // sh + 1
    ow = (w + left + right - kw) // sw + 1
    return xp, (top, left), (sh, sw), (oh, ow)


def _group_channels(f, f_out, groups, c_per_group):
    """The input channels filter f sees: those of its group, f // (F / groups)."""
    first = (f // (f_out // groups)) * c_per_group
    return slice(first, first + c_per_group)


def conv2d(x, weight, bias, stride=1, padding=0, padding_mode="zeros", groups=1):
    """y[n, f, i, j] = b[f] + sum_{c,u,v} w[f, c, u, v] * xpad[n, c0 + c, i*sh + u, j*sw + v],
    with c0 the first input channel of filter f's group (0 when ``groups`` is 1)."""
    f_out, c_per_group, kh, kw = weight.shape
    xp, _, (sh, sw), (oh, ow) = _padded(x, kh, kw, stride, padding, mode=padding_mode)
    y = np.zeros((x.shape[0], f_out, oh, ow), dtype=x.dtype)
    for n in range(x.shape[0]):
        for f in range(f_out):
            cs = _group_channels(f, f_out, groups, c_per_group)
            for i in range(oh):
                for j in range(ow):
                    patch = xp[n, cs, i * sh:i * sh + kh, j * sw:j * sw + kw]
                    y[n, f, i, j] = np.sum(patch * weight[f]) + (0 if bias is None else bias[f])
    return y


def conv2d_backward(dy, x, weight, stride=1, padding=0, padding_mode="zeros", groups=1):
    """(dx, dw, db) by accumulating every output pixel's contribution, one at a time."""
    f_out, c_per_group, kh, kw = weight.shape
    xp, (top, left), (sh, sw), (oh, ow) = _padded(x, kh, kw, stride, padding, mode=padding_mode)
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(weight)
    for n in range(x.shape[0]):
        for f in range(f_out):
            cs = _group_channels(f, f_out, groups, c_per_group)
            for i in range(oh):
                for j in range(ow):
                    g = dy[n, f, i, j]
                    dw[f] += g * xp[n, cs, i * sh:i * sh + kh, j * sw:j * sw + kw]
                    dxp[n, cs, i * sh:i * sh + kh, j * sw:j * sw + kw] += g * weight[f]
    return _unpad(dxp, x.shape, top, left, padding_mode), dw, dy.sum(axis=(0, 2, 3))


def _unpad(dxp, shape, top, left, mode):
    """Gradient of the padding: crop, or send each padded pixel's gradient to its source."""
    h, w = shape[2:]
    if mode != "replicate":
        return dxp[:, :, top:top + h, left:left + w]
    dx = np.zeros(shape, dtype=dxp.dtype)
    for i in range(dxp.shape[2]):
        for j in range(dxp.shape[3]):
            dx[:, :, min(max(i - top, 0), h - 1), min(max(j - left, 0), w - 1)] += dxp[:, :, i, j]
    return dx


def im2col(x, kernel_size, stride=1, padding=0, padding_mode="zeros"):
    """cols[n, c*kh*kw + u*kw + v, i*OW + j] = xpad[n, c, i*sh + u, j*sw + v]."""
    kh, kw = _two(kernel_size)
    xp, _, (sh, sw), (oh, ow) = _padded(x, kh, kw, stride, padding, mode=padding_mode)
    n_, c_ = x.shape[:2]
    cols = np.zeros((n_, c_ * kh * kw, oh * ow), dtype=x.dtype)
    for n in range(n_):
        for c in range(c_):
            for u in range(kh):
                for v in range(kw):
                    for i in range(oh):
                        for j in range(ow):
                            cols[n, c * kh * kw + u * kw + v, i * ow + j] = xp[n, c, i * sh + u, j * sw + v]
    return cols


def _pool(x, kernel_size, stride, padding, fill, reduce, mode="zeros"):
    kh, kw = _two(kernel_size)
    stride = (kh, kw) if stride is None else stride
    xp, offsets, (sh, sw), (oh, ow) = _padded(x, kh, kw, stride, padding, fill, mode)
    y = np.zeros(x.shape[:2] + (oh, ow), dtype=x.dtype)
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            for i in range(oh):
                for j in range(ow):
                    y[n, c, i, j] = reduce(xp[n, c, i * sh:i * sh + kh, j * sw:j * sw + kw])
    return y, xp, offsets, (sh, sw), (kh, kw)


def max_pool2d(x, kernel_size, stride=None, padding=0, padding_mode="zeros"):
    """y[n, c, i, j] = max of the window (padding is -inf)."""
    return _pool(x, kernel_size, stride, padding, -np.inf, np.max, padding_mode)[0]


def max_pool2d_backward(dy, x, kernel_size, stride=None, padding=0, padding_mode="zeros"):
    """Each dy goes to the first maximum of its window in row-major order."""
    return _route_to_one(dy, x, kernel_size, stride, padding, padding_mode, -np.inf, np.argmax)


def _route_to_one(dy, x, kernel_size, stride, padding, padding_mode, fill, pick):
    """Send each dy to the element ``pick`` (argmax / argmin: the first one) of its window."""
    _, xp, (top, left), (sh, sw), (kh, kw) = _pool(x, kernel_size, stride, padding, fill, np.max,
                                                   padding_mode)
    dxp = np.zeros_like(xp)
    for n in range(dy.shape[0]):
        for c in range(dy.shape[1]):
            for i in range(dy.shape[2]):
                for j in range(dy.shape[3]):
                    window = xp[n, c, i * sh:i * sh + kh, j * sw:j * sw + kw]
                    u, v = divmod(int(pick(window)), kw)
                    dxp[n, c, i * sh + u, j * sw + v] += dy[n, c, i, j]
    return _unpad(dxp, x.shape, top, left, padding_mode)


def min_pool2d(x, kernel_size, stride=None, padding=0, padding_mode="zeros"):
    """y[n, c, i, j] = min of the window (padding is +inf)."""
    return _pool(x, kernel_size, stride, padding, np.inf, np.min, padding_mode)[0]


def min_pool2d_backward(dy, x, kernel_size, stride=None, padding=0, padding_mode="zeros"):
    """Each dy goes to the first minimum of its window in row-major order."""
    return _route_to_one(dy, x, kernel_size, stride, padding, padding_mode, np.inf, np.argmin)


def upsample_nearest(x, scale):
    """y[n, c, i, j] = x[n, c, i // rh, j // rw]."""
    rh, rw = _two(scale)
    n, c, h, w = x.shape
    y = np.zeros((n, c, h * rh, w * rw), dtype=x.dtype)
    for i in range(h * rh):
        for j in range(w * rw):
            y[:, :, i, j] = x[:, :, i // rh, j // rw]
    return y


def upsample_nearest_backward(dy, scale):
    """dx[n, c, i, j] = sum of dy over the block that pixel (i, j) was copied to."""
    rh, rw = _two(scale)
    n, c, hh, ww = dy.shape
    dx = np.zeros((n, c, hh // rh, ww // rw), dtype=dy.dtype)
    for i in range(hh):
        for j in range(ww):
            dx[:, :, i // rh, j // rw] += dy[:, :, i, j]
    return dx


def batchnorm_train(x, gamma, beta, eps=1e-5):
    """Batch-statistics normalisation per channel (axis 1), channel by channel.

    Returns (y, batch mean, biased batch variance).
    """
    y = np.zeros_like(x)
    means, variances = [], []
    for c in range(x.shape[1]):
        values = x[:, c].ravel()
        mean = sum(values) / len(values)
        var = sum((v - mean) ** 2 for v in values) / len(values)
        y[:, c] = gamma[c] * (x[:, c] - mean) / np.sqrt(var + eps) + beta[c]
        means.append(mean)
        variances.append(var)
    return y, np.array(means), np.array(variances)


def avg_pool2d(x, kernel_size, stride=None, padding=0, padding_mode="zeros"):
    """y[n, c, i, j] = mean of the window, zero padding included."""
    return _pool(x, kernel_size, stride, padding, 0.0, np.mean, padding_mode)[0]


def avg_pool2d_backward(dy, x, kernel_size, stride=None, padding=0, padding_mode="zeros"):
    """Each dy is shared equally by the kh*kw pixels of its window."""
    _, xp, (top, left), (sh, sw), (kh, kw) = _pool(x, kernel_size, stride, padding, 0.0, np.mean,
                                                   padding_mode)
    dxp = np.zeros_like(xp)
    for n in range(dy.shape[0]):
        for c in range(dy.shape[1]):
            for i in range(dy.shape[2]):
                for j in range(dy.shape[3]):
                    dxp[n, c, i * sh:i * sh + kh, j * sw:j * sw + kw] += dy[n, c, i, j] / (kh * kw)
    return _unpad(dxp, x.shape, top, left, padding_mode)


def global_avg_pool2d(x):
    """y[n, c] = mean over i, j of x[n, c, i, j]."""
    n_, c_, h, w = x.shape
    y = np.zeros((n_, c_), dtype=x.dtype)
    for n in range(n_):
        for c in range(c_):
            y[n, c] = sum(x[n, c, i, j] for i in range(h) for j in range(w)) / (h * w)
    return y


def global_avg_pool2d_backward(dy, x):
    """Each dy[n, c] is shared equally by the h*w pixels of its channel."""
    dx = np.zeros_like(x)
    h, w = x.shape[2:]
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            for i in range(h):
                for j in range(w):
                    dx[n, c, i, j] = dy[n, c] / (h * w)
    return dx


def dense(x, weight, bias):
    """y[n, o] = b[o] + sum_i w[o, i] x[n, i]."""
    y = np.zeros((x.shape[0], weight.shape[0]), dtype=x.dtype)
    for n in range(x.shape[0]):
        for o in range(weight.shape[0]):
            y[n, o] = bias[o] + sum(weight[o, i] * x[n, i] for i in range(x.shape[1]))
    return y


def dense_backward(dy, x, weight):
    """(dx, dw, db) summed sample by sample."""
    dx = np.zeros_like(x)
    dw = np.zeros_like(weight)
    for n in range(x.shape[0]):
        dx[n] = weight.T @ dy[n]
        dw += np.outer(dy[n], x[n])
    return dx, dw, dy.sum(axis=0)


def softmax_cross_entropy(logits, labels):
    """Mean over samples of -log(softmax(logits)[label]), sample by sample."""
    total = 0.0
    for row, label in zip(logits, labels):
        m = max(row)
        log_z = m + math.log(sum(math.exp(v - m) for v in row))
        total += log_z - row[int(label)]
    return total / len(labels)


def mse(pred, target):
    """Mean of the squared differences."""
    return float(np.mean((np.asarray(pred) - np.asarray(target)) ** 2))


def add(xs):
    """y[i] = sum over the inputs k of xs[k][i], element by element."""
    y = np.zeros_like(xs[0])
    for index in np.ndindex(*y.shape):
        y[index] = sum(x[index] for x in xs)
    return y


def concatenate(xs, axis):
    """y along ``axis``: the slices of xs[0], then those of xs[1], ..., copied one by one."""
    shape = list(xs[0].shape)
    shape[axis] = sum(x.shape[axis] for x in xs)
    y = np.zeros(shape, dtype=xs[0].dtype)
    offset = 0
    for x in xs:
        for i in range(x.shape[axis]):
            target = [slice(None)] * y.ndim
            target[axis] = offset + i
            source = [slice(None)] * x.ndim
            source[axis] = i
            y[tuple(target)] = x[tuple(source)]
        offset += x.shape[axis]
    return y


def concatenate_backward(dy, sizes, axis):
    """Each input's gradient: the slices of dy along ``axis`` that its values were copied to."""
    pieces, offset = [], 0
    for size in sizes:
        shape = list(dy.shape)
        shape[axis] = size
        dx = np.zeros(shape, dtype=dy.dtype)
        for i in range(size):
            target = [slice(None)] * dy.ndim
            target[axis] = i
            source = [slice(None)] * dy.ndim
            source[axis] = offset + i
            dx[tuple(target)] = dy[tuple(source)]
        pieces.append(dx)
        offset += size
    return pieces


def random_crop_flip(x, plan, padding):
    """Each image of ``x`` (N, C, H, W) zero-padded by ``padding``, the H x W window at the
    plan's offsets (dy, dx) cut out and, where its flip is 1, mirrored left to right; pixel by
    pixel."""
    n, c, h, w = x.shape
    out = np.zeros_like(x)
    for i, (dy, dx, flip) in enumerate(plan):
        for r in range(h):
            for s in range(w):
                src_r, src_s = dy + r - padding, dx + (w - 1 - s if flip else s) - padding
                if 0 <= src_r < h and 0 <= src_s < w:
                    out[i, :, r, s] = x[i, :, src_r, src_s]
    return out
