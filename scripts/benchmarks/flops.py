"""Floating-point operations of a network's training step and inference, counted from the built
model, and the matrix products they amount to.

Only the convolutions' and dense layers' multiply-adds count (the usual convention: activations,
pooling, normalisation, the loss and the optimizer's update are a few operations an element,
not a product). Per call of a layer, at batch ``n``:

- convolution, weight ``(F, C // groups, kh, kw)``, output ``(F, OH, OW)``:
  ``n * F * OH * OW * (C // groups) * kh * kw`` multiply-adds;
- dense, weight ``(out, in)``: ``n * out * in``.

A training step does each of them three times (forward, weight gradient, input gradient) except
the input gradient of a layer that needs none (``need_input_grad`` False: the network's first
layer); inference does the forward alone. FLOPs are twice the multiply-adds. A graph
:class:`~portacnn.Model` counts every call of a shared layer.
"""

from __future__ import annotations

import math

from portacnn import Conv2D, Dense


def layer_products(model, n: int) -> list[dict]:
    """The matrix products of ``model``'s convolutions and dense layers at batch ``n``, one dict
    per call in order: ``layer`` (its name), ``macs`` (multiply-adds of its forward), ``need_dx``
    and the forward as ``groups`` products ``(m, k) @ (k, cols)`` with the batch folded into
    the columns (im2col: m = F // groups, k = C // groups * kh * kw, cols = n * OH * OW;
    dense: m = n, k = in, cols = out)."""
    out = []
    for _, layer, shape, _ in model.summary_rows():
        if isinstance(layer, Conv2D):
            f, cg, kh, kw = tuple(layer.params["weight"].shape)
            groups = getattr(layer, "groups", 1)
            m, k, cols = f // groups, cg * kh * kw, n * math.prod(shape[1:])
        elif isinstance(layer, Dense):
            groups, (m, (cols, k)) = 1, (n, tuple(layer.params["weight"].shape))
        else:
            continue
        out.append({"layer": layer.name, "groups": groups, "m": m, "k": k, "cols": cols,
                    "macs": groups * m * k * cols,
                    "need_dx": bool(getattr(layer, "need_input_grad", True))})
    return out


def step_flops(model, n: int) -> dict:
    """``{"train": ..., "infer": ...}``: FLOPs of one training step and of one inference of a
    batch of ``n`` (see the module docstring)."""
    products = layer_products(model, n)
    forward = sum(p["macs"] for p in products)
    train = sum(p["macs"] * (3 if p["need_dx"] else 2) for p in products)
    return {"train": 2 * train, "infer": 2 * forward}


def gemm_shapes(model, n: int, mode: str) -> list[tuple]:
    """The products ``(count, (a_shape, b_shape))`` of one training step (``mode`` "train":
    forward ``(m, k) @ (k, cols)``, weight gradient ``(m, cols) @ (cols, k)``, input gradient
    ``(k, m) @ (m, cols)`` where needed) or inference ("infer": the forwards) at batch ``n``."""
    shapes = []
    for p in layer_products(model, n):
        m, k, cols = p["m"], p["k"], p["cols"]
        shapes.append((p["groups"], ((m, k), (k, cols))))
        if mode == "train":
            shapes.append((p["groups"], ((m, cols), (cols, k))))
            if p["need_dx"]:
                shapes.append((p["groups"], ((k, m), (m, cols))))
    return shapes
