"""Pictures of what a network learned: training curves, filters, feature maps, predictions and
the confusion matrix.

Needs matplotlib (``pip install "portacnn[viz]"``); ``import portacnn`` does not import it.
Every function returns a ``matplotlib.figure.Figure`` built without pyplot (so it works
headless and leaves your pyplot state alone) and, given ``path``, also writes it as a PNG.
Models on any backend work: arrays are copied to the host for drawing.

    >>> from portacnn import viz
    >>> viz.plot_history(history, "history.png")
    >>> viz.plot_filters(model, "conv1", path="filters.png")
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

try:
    from matplotlib.figure import Figure
except ImportError as exc:  # pragma: no cover - exercised only without matplotlib
    raise ImportError('portacnn.viz needs matplotlib: pip install "portacnn[viz]"') from exc

from .layers import AvgPool2D, Conv2D, MaxPool2D, MinPool2D
from .backends import is_host_array, to_numpy

__all__ = ["REPORT_PLOTS", "plot_report", "plot_history", "plot_filters", "plot_feature_maps",
           "plot_predictions", "plot_confusion", "confusion_matrix"]

DPI = 100


def _finish(fig, path):
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=DPI, format="png")
    return fig


def _image_grid(fig, rows, cols):
    return fig.subplots(rows, cols, squeeze=False)


def plot_history(history, path=None):
    """Loss and accuracy per epoch, training and (if present) validation.

    Args:
        history: a :class:`~portacnn.model.History` (or its ``.history`` dict).
    """
    h = getattr(history, "history", history)
    if not h.get("loss"):
        raise ValueError("the history is empty: train for at least one epoch first")
    epochs = np.arange(1, len(h["loss"]) + 1)
    fig = Figure(figsize=(9, 3.6))
    ax_loss, ax_acc = fig.subplots(1, 2)
    ax_loss.plot(epochs, h["loss"], "o-", label="training")
    if "val_loss" in h:
        ax_loss.plot(epochs, h["val_loss"], "s--", label="validation")
    ax_loss.set(title="Loss", xlabel="epoch", ylabel="cross-entropy")
    if "accuracy" in h:
        ax_acc.plot(epochs, h["accuracy"], "o-", label="training")
        if "val_accuracy" in h:
            ax_acc.plot(epochs, h["val_accuracy"], "s--", label="validation")
        ax_acc.set(title="Accuracy", xlabel="epoch", ylabel="fraction correct")
        ax_acc.legend()
    else:
        ax_acc.set_axis_off()
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.set_xticks(epochs if len(epochs) <= 15 else epochs[:: max(1, len(epochs) // 10)])
    ax_loss.legend()
    fig.tight_layout()
    return _finish(fig, path)


def _find_layer(model, layer, kinds, what):
    candidates = [(i, l) for i, l in enumerate(model.layers) if isinstance(l, kinds)]
    if not candidates:
        raise ValueError(f"the model has no {what} layer")
    if layer is None:
        return candidates[0][1]
    for i, l in candidates:
        if layer in (i, l.name) or layer is l:
            return l
    names = ", ".join(f"{i} ({l.name})" for i, l in candidates)
    raise ValueError(f"no {what} layer {layer!r}; the {what} layers are {names}")


def plot_filters(model, layer=None, path=None):
    """The kernels of a convolution as a grid: one tile per (output, input) channel pair.

    Args:
        layer: the layer's index or name (default: the first convolution).

    Rows are output channels, columns input channels (a single input channel is drawn as one
    row of output channels); all tiles share one symmetric colour scale, so a weight's colour
    means the same value in every tile (red +, blue -). The figure's ``tiles`` attribute is
    the number of kernels drawn.
    """
    conv = _find_layer(model, layer, Conv2D, "convolution")
    w = to_numpy(conv.params["weight"])            # (out, in, kh, kw)
    out_c, in_c = w.shape[:2]
    limit = float(np.max(np.abs(w))) or 1.0
    one_row = in_c == 1
    rows, cols = (1, out_c) if one_row else (out_c, in_c)
    fig = Figure(figsize=(max(5.0, 1.6 + 0.9 * cols), 1.2 + 0.9 * rows), layout="constrained")
    axes = _image_grid(fig, rows, cols)
    image = None
    for o in range(out_c):
        for i in range(in_c):
            ax = axes[0, o] if one_row else axes[o, i]
            image = ax.imshow(w[o, i], cmap="RdBu_r", vmin=-limit, vmax=limit)
            ax.set_xticks([])
            ax.set_yticks([])
            if one_row:
                ax.set_title(f"out {o}", fontsize=8)
            else:
                if i == 0:
                    ax.set_ylabel(f"out {o}", fontsize=8)
                if o == 0:
                    ax.set_title(f"in {i}", fontsize=8)
    fig.suptitle(f"{conv.name}: {out_c} x {in_c} kernels of {w.shape[2]}x{w.shape[3]}")
    fig.colorbar(image, ax=axes, shrink=0.8, label="weight")
    fig.tiles = out_c * in_c
    return _finish(fig, path)


def plot_feature_maps(model, image, path=None, max_channels: int = 16):
    """The activations of every convolution and pooling layer for one input, a row per layer.

    Args:
        image: one input, (C, H, W) or (1, C, H, W), already normalised like the training data.
        max_channels: channels shown per layer (the first ones).

    The layers run in inference mode on the model's device; the model's training mode is
    restored afterwards, also when a layer fails.
    """
    x = to_numpy(image) if not is_host_array(image) else np.asarray(image)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(f"plot_feature_maps takes one image (C, H, W), got shape {x.shape}")
    rows = []
    was_training = model.training
    model.eval()
    try:                               # the layers run on the model's device (cuda:N)
        with model.backend.activate():
            h = model.backend.asarray(x, dtype=model.dtype_name)
            for layer, out in model.activations(h):    # in order, for a graph too
                if isinstance(layer, (Conv2D, MaxPool2D, MinPool2D, AvgPool2D)):
                    rows.append((layer.name, to_numpy(out)[0]))
    finally:
        model.train(was_training)
    if not rows:
        raise ValueError("the model has no convolution or pooling layer to show")
    cols = min(max_channels, max(r[1].shape[0] for r in rows))
    fig = Figure(figsize=(1.2 + 1.1 * (cols + 1), 0.4 + 1.2 * len(rows)))
    axes = _image_grid(fig, len(rows), cols + 1)
    for r, (name, maps) in enumerate(rows):
        first = axes[r, 0]
        first.imshow(x[0, 0], cmap="gray")
        first.set_ylabel(f"{name}\n{maps.shape[1]}x{maps.shape[2]}", fontsize=8)
        if r == 0:
            first.set_title("input", fontsize=8)
        for c in range(cols):
            ax = axes[r, c + 1]
            if c < maps.shape[0]:
                ax.imshow(maps[c], cmap="viridis")
                if r == 0 or c >= rows[r - 1][1].shape[0]:
                    ax.set_title(f"ch {c}", fontsize=8)
            else:
                ax.set_axis_off()
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle("Feature maps, layer by layer (each map on its own colour scale)")
    fig.tight_layout()
    return _finish(fig, path)


def _predicted_labels(model, x):
    return np.argmax(to_numpy(model.predict(x)), axis=1)


def plot_predictions(model, x, y, n: int = 25, path=None):
    """A grid of the first ``n`` images with predicted and true labels; mistakes in red.

    Args:
        x: (N, 1, H, W) inputs as the model takes them; y: (N,) integer labels.
    """
    y = to_numpy(y)
    n = min(n, x.shape[0])
    if n < 1:
        raise ValueError("no images to show")
    pred = _predicted_labels(model, x[:n])
    images = to_numpy(x[:n])
    cols = min(n, 5 if n <= 25 else 10)
    rows = -(-n // cols)
    fig = Figure(figsize=(1.6 * cols, 1.8 * rows))
    axes = _image_grid(fig, rows, cols)
    for k, ax in enumerate(axes.ravel()):
        ax.set_xticks([])
        ax.set_yticks([])
        if k >= n:
            ax.set_axis_off()
            continue
        ax.imshow(images[k, 0], cmap="gray")
        right = pred[k] == y[k]
        ax.set_title(f"pred {pred[k]} / true {int(y[k])}" + ("" if right else "  X"),
                     fontsize=8, color="black" if right else "red")
        if not right:
            for side in ax.spines.values():
                side.set_edgecolor("red")
                side.set_linewidth(2.5)
    wrong = int(np.sum(pred != y[:n]))
    fig.suptitle(f"{n - wrong} of {n} right; mistakes in red")
    fig.tight_layout()
    return _finish(fig, path)


def confusion_matrix(model, x, y, num_classes: int | None = None) -> np.ndarray:
    """Counts ``[true, predicted]`` over ``(x, y)`` as an integer NumPy array."""
    y = to_numpy(y).astype(np.int64)
    pred = _predicted_labels(model, x)
    k = num_classes or int(max(pred.max(), y.max()) + 1)
    return np.bincount(y * k + pred, minlength=k * k).reshape(k, k)


def plot_confusion(model, x, y, path=None):
    """A confusion matrix with counts: rows are true classes, columns predictions.

    The figure's ``confusion`` attribute holds the matrix (see :func:`confusion_matrix`).
    """
    matrix = confusion_matrix(model, x, y)
    k = matrix.shape[0]
    fig = Figure(figsize=(1.2 + 0.6 * k, 0.8 + 0.6 * k))
    ax = fig.subplots()
    image = ax.imshow(matrix, cmap="Blues")
    high = matrix.max() / 2
    for t in range(k):
        for p in range(k):
            ax.text(p, t, str(matrix[t, p]), ha="center", va="center", fontsize=8,
                    color="white" if matrix[t, p] > high else "black")
    ax.set(xticks=range(k), yticks=range(k), xlabel="predicted", ylabel="true",
           title=f"Confusion matrix: {np.trace(matrix)} of {matrix.sum()} right "
                 f"({np.trace(matrix) / matrix.sum():.1%})")
    fig.colorbar(image, ax=ax, shrink=0.8, label="images")
    fig.tight_layout()
    fig.confusion = matrix
    return _finish(fig, path)


REPORT_PLOTS = ("history", "filters", "feature_maps", "predictions", "confusion")


def plot_report(directory, model, history, x, y) -> list[Path]:
    """The five PNGs of ``train --plots`` in ``directory`` (created if missing): the training
    curves, the first layer's filters, the feature maps of ``x[0]``, predictions on the first
    25 of ``x`` (N, C, H, W) with labels ``y`` (N,), and the confusion matrix. Returns the paths
    written, in :data:`REPORT_PLOTS` order."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"{name}.png" for name in REPORT_PLOTS]
    plot_history(history, paths[0])
    plot_filters(model, path=paths[1])
    plot_feature_maps(model, x[0], path=paths[2])
    plot_predictions(model, x, y, n=25, path=paths[3])
    plot_confusion(model, x, y, path=paths[4])
    return paths
