"""The data checks at the boundary of ``fit`` / ``evaluate`` / ``predict``.

Each call checks its data once, before any work, in two steps with the model's build between
them (the loop takes that step: :meth:`Sequential.build_for`; checking never builds):

1. :func:`check_arrays`, before the build: ``x`` and ``y`` are host NumPy arrays or arrays on
   the model's device, and ``x`` has samples.
2. :func:`check_against_model`, on the built model: ``x`` has the model's per-sample shape,
   ``y`` as many rows as ``x``; no NaN or infinity in ``x`` (one reduction over ``x``) or in
   MSE targets; labels fit the loss (integer dtype, range ``[0, classes)``, shape; or one-hot
   rows).

Each value check reads one boolean back from where the array lives; the search for the first
bad sample, which the error names, runs only on error.
"""

from __future__ import annotations

from ..backends import describe_array, is_host_array, namespace
from ..scalars import positive_int

__all__ = ["positive_int", "validation_pair", "check_arrays", "check_against_model"]


def validation_pair(validation_data) -> tuple:
    """``validation_data`` as ``(x_val, y_val)``; raise unless it is a tuple or list of two
    with ``y_val`` given (checked before training, so a bad form cannot end a finished epoch).
    The arrays themselves are checked like ``x`` and ``y`` once the model is built."""
    fix = ("pass validation_data=(x_test, y_test), or validation_split=0.1 to hold out the "
           "last tenth of x")
    if not isinstance(validation_data, (tuple, list)):
        kind = type(validation_data)
        name = (kind.__name__ if kind.__module__ == "builtins"
                else f"{kind.__module__}.{kind.__name__}")
        raise TypeError(f"validation_data must be a pair (x_val, y_val), got a {name}: {fix}")
    if len(validation_data) != 2:
        count = len(validation_data)
        raise ValueError(f"validation_data must be a pair (x_val, y_val), got a "
                         f"{type(validation_data).__name__} of {count} item{'s' * (count != 1)}"
                         f": {fix}")
    x_val, y_val = validation_data
    if y_val is None:
        raise TypeError(f"validation_data must be a pair (x_val, y_val) but y_val is None: "
                        f"validation needs labels; {fix}")
    return x_val, y_val


def _y_name(what: str) -> str:
    return what[:-1] + "y"                              # "x" -> "y", "validation x" -> ...


def check_arrays(model, x, y=None, what="x"):
    """Raise unless ``x`` (and ``y``) are host NumPy arrays or arrays on the model's device
    and ``x`` has samples: what can be checked before the model is built."""
    for arr, name in ((x, what), (y, _y_name(what))):
        if arr is None:
            continue
        if not (is_host_array(arr) or model.backend.owns(arr)):
            raise TypeError(
                f"{name} is a {describe_array(arr)} but the model is on {model.backend.name} "
                f"({model.backend.device}): pass a host NumPy array or move it with "
                "model.backend.asarray(x)"
            )
    if x.ndim == 0 or x.shape[0] == 0:
        raise ValueError(f"{what} has no samples (shape {tuple(x.shape)})")


def check_against_model(model, x, y=None, what="x", values=True):
    """Raise unless ``x`` (N, *input_shape) (and ``y``) fit the built model: shapes, row
    counts, labels. ``values``: also refuse NaN or infinity in ``x`` (and in MSE targets).
    Labels are always checked. Call :func:`check_arrays` first."""
    model.require_built()
    y_what = _y_name(what)
    if tuple(x.shape[1:]) != model.input_shape:
        raise ValueError(f"{what} has shape {tuple(x.shape)} but the model expects "
                         f"(N, {', '.join(map(str, model.input_shape))})")
    if y is not None and (y.ndim == 0 or y.shape[0] != x.shape[0]):
        raise ValueError(f"{what} has {x.shape[0]} samples but {y_what} has "
                         f"{y.shape[0] if y.ndim else 'none (it is a scalar)'}")
    if values:
        _check_finite(x, what)
    if y is not None:
        _check_targets(model, y, y_what, values)


def _check_finite(x, what):
    """Raise ``ValueError`` naming the first sample of ``x`` that holds NaN or infinity. One
    reduction and one read where ``x`` lives (host or device); the search runs only on error."""
    xp = namespace(x)
    if not xp.isdtype(x.dtype, "real floating"):
        return                                          # integer images cannot be NaN
    finite = xp.isfinite(x)
    if bool(xp.all(finite)):
        return
    per_sample = xp.all(xp.reshape(finite, (x.shape[0], -1)), axis=1)
    bad = xp.nonzero(~per_sample)[0]
    raise ValueError(
        f"{what}[{int(bad[0])}] holds NaN or infinity ({bad.shape[0]} of {x.shape[0]} samples "
        "do): training on it would make every weight NaN; drop or repair those samples first, "
        "e.g. keep = np.isfinite(x).reshape(len(x), -1).all(axis=1); x, y = x[keep], y[keep]")


def _check_targets(model, y, what, values=True):
    """Raise unless ``y`` fits the model's loss: for cross-entropy (N,) integer labels in
    ``[0, classes)`` or (N, classes) rows that are >= 0 and sum to 1 (one-hot or
    probabilities); for MSE, targets of the output's per-sample shape. The first bad sample
    is named."""
    out = tuple(model.output_shape)
    if model.loss_name != "cross_entropy":
        if tuple(y.shape[1:]) != out:
            raise ValueError(f"{what} has shape {tuple(y.shape)} but the model outputs "
                             f"(N, {', '.join(map(str, out))}): {model.loss_name} targets "
                             "have the output's shape")
        if values:
            _check_finite(y, what)
        return
    if len(out) != 1:
        raise ValueError(f"cross-entropy needs logits of shape (N, classes) but the model "
                         f"outputs (N, {', '.join(map(str, out))}): end it with Flatten() "
                         "and Dense(classes)")
    k = out[0]
    xp = namespace(y)
    if y.ndim == 1:
        if not xp.isdtype(y.dtype, "integral"):
            raise TypeError(
                f"{what} holds {y.dtype} labels but class labels are integers in [0, {k}): "
                "convert them, e.g. y.astype(int) for whole numbers stored as floats, or "
                "classes, y = np.unique(y, return_inverse=True) for names")
        bad = (y < 0) | (y >= k)
        if bool(xp.any(bad)):
            i = int(xp.nonzero(bad)[0][0])
            raise ValueError(
                f"{what}[{i}] is {int(y[i])} but the model has {k} classes: labels must be "
                f"integers in [0, {k}) (give the last Dense layer as many outputs as there are "
                "classes, or map the labels onto 0..classes-1)")
        return
    if y.ndim != 2 or y.shape[1] != k:
        raise ValueError(f"{what} has shape {tuple(y.shape)}: labels are (N,) integers in "
                         f"[0, {k}) or (N, {k}) one-hot rows"
                         + (" (flatten a column of labels with y.reshape(-1))"
                            if y.ndim == 2 and y.shape[1] == 1 else ""))
    if not (xp.isdtype(y.dtype, "real floating") or xp.isdtype(y.dtype, "integral")):
        raise TypeError(f"{what} holds {y.dtype} one-hot rows; give numbers (0 and 1)")
    rows = xp.astype(y, xp.float32) if xp.isdtype(y.dtype, "integral") else y
    ok = (xp.all(rows >= 0, axis=1) & xp.all(xp.isfinite(rows), axis=1)
          & (xp.abs(xp.sum(rows, axis=1) - 1) <= 1e-3))
    if not bool(xp.all(ok)):
        i = int(xp.nonzero(~ok)[0][0])
        raise ValueError(
            f"{what}[{i}] is not a one-hot row (its entries must be >= 0 and sum to 1, got "
            f"sum {float(xp.sum(rows[i, ...])):g}): give (N, {k}) one-hot rows or (N,) integer "
            "labels")
