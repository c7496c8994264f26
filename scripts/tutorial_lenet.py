"""LeNet-5 the way the "CNN from scratch" tutorials write it, kept as a speed peer for bench.py.

Convolution by im2col with a fancy-index gather (``xpad[:, d, i, j]``) and col2im with
``np.add.at``, columns laid out (C*kh*kw, N*OH*OW): the algorithm those tutorials teach, written
here for comparison only (NumPy, CPU). It is not part of the library and not portable: fancy
indexing into a padded array and ``np.add.at`` are outside the array API standard.
"""

from __future__ import annotations

import numpy as np


def _indices(c, h, w, k, pad):
    """Row, column and channel index arrays that gather every k x k window (stride 1)."""
    oh, ow = h + 2 * pad - k + 1, w + 2 * pad - k + 1
    rows = np.tile(np.repeat(np.arange(k), k), c)[:, None] + np.repeat(np.arange(oh), ow)[None, :]
    cols = np.tile(np.tile(np.arange(k), k), c)[:, None] + np.tile(np.arange(ow), oh)[None, :]
    chans = np.repeat(np.arange(c), k * k)[:, None]
    return chans, rows, cols, oh, ow


class TutorialConv:
    def __init__(self, weight, bias, pad):
        self.w, self.b, self.pad = weight.copy(), bias.copy(), pad
        self.idx = None

    def forward(self, x):
        n, c, h, w = x.shape
        f, _, k, _ = self.w.shape
        if self.idx is None or self.idx[0] != x.shape:
            self.idx = (x.shape, _indices(c, h, w, k, self.pad))
        d, i, j, oh, ow = self.idx[1]
        xpad = np.pad(x, ((0, 0), (0, 0), (self.pad, self.pad), (self.pad, self.pad)))
        cols = xpad[:, d, i, j]                                    # (N, C*K, L) gather
        self.cols = np.concatenate(cols, axis=-1)                  # (C*K, N*L)
        self.x_shape = x.shape
        y = self.w.reshape(f, -1) @ self.cols + self.b[:, None]   # (F, N*L)
        return np.array(np.hsplit(y, n)).reshape(n, f, oh, ow)

    def backward(self, dy):
        n, f = dy.shape[:2]
        d, i, j, _, _ = self.idx[1]
        dy_mat = np.concatenate(dy.reshape(n, f, -1), axis=-1)   # (F, N*L)
        self.dw = (dy_mat @ self.cols.T).reshape(self.w.shape)
        self.db = dy_mat.sum(axis=1)
        dcols = self.w.reshape(f, -1).T @ dy_mat
        _, c, h, w = self.x_shape
        p = self.pad
        dxpad = np.zeros((n, c, h + 2 * p, w + 2 * p), dtype=dy.dtype)
        np.add.at(dxpad, (slice(None), d, i, j), np.array(np.hsplit(dcols, n)))
        return dxpad[:, :, p:p + h, p:p + w] if p else dxpad


class TutorialAvgPool:
    def forward(self, x):
        n, c, h, w = x.shape
        self.shape = x.shape
        return x.reshape(n, c, h // 2, 2, w // 2, 2).mean(axis=(3, 5))

    def backward(self, dy):
        return np.repeat(np.repeat(dy, 2, axis=2), 2, axis=3) / 4


class TutorialTanh:
    def forward(self, x):
        self.y = np.tanh(x)
        return self.y

    def backward(self, dy):
        return dy * (1 - self.y ** 2)


class TutorialDense:
    def __init__(self, weight, bias):
        self.w, self.b = weight.copy(), bias.copy()

    def forward(self, x):
        self.x_shape = x.shape
        self.x = x.reshape(x.shape[0], -1)
        return self.x @ self.w.T + self.b

    def backward(self, dy):
        self.dw = dy.T @ self.x
        self.db = dy.sum(axis=0)
        return (dy @ self.w).reshape(self.x_shape)


class TutorialLeNet:
    """LeNet-5 (tanh, average pooling) with weights copied from a portacnn model."""

    def __init__(self, model, lr=0.01, momentum=0.9):
        p = [layer.params for layer in model.layers]
        tonp = model.backend.to_numpy
        self.layers = [
            TutorialConv(tonp(p[0]["weight"]), tonp(p[0]["bias"]), 2), TutorialTanh(),
            TutorialAvgPool(),
            TutorialConv(tonp(p[3]["weight"]), tonp(p[3]["bias"]), 0), TutorialTanh(),
            TutorialAvgPool(),
            TutorialDense(tonp(p[7]["weight"]), tonp(p[7]["bias"])), TutorialTanh(),
            TutorialDense(tonp(p[9]["weight"]), tonp(p[9]["bias"])), TutorialTanh(),
            TutorialDense(tonp(p[11]["weight"]), tonp(p[11]["bias"])),
        ]
        self.lr, self.momentum, self.velocity = lr, momentum, {}

    def train_step(self, x, y):
        out = x
        for layer in self.layers:
            out = layer.forward(out)
        shifted = out - out.max(axis=1, keepdims=True)
        probs = np.exp(shifted)
        probs /= probs.sum(axis=1, keepdims=True)
        loss = -np.log(probs[np.arange(len(y)), y]).mean()
        grad = probs
        grad[np.arange(len(y)), y] -= 1
        grad /= len(y)
        for layer in reversed(self.layers):
            grad = layer.backward(grad)
        for k, layer in enumerate(self.layers):
            for name in ("w", "b"):
                if hasattr(layer, "d" + name):
                    g = getattr(layer, "d" + name)
                    v = self.velocity.get((k, name))
                    v = g if v is None else self.momentum * v + g
                    self.velocity[k, name] = v
                    setattr(layer, name, getattr(layer, name) - self.lr * v)
        return loss
