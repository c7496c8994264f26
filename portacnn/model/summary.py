"""``Sequential.summary``'s table: each layer's name, settings, output shape and parameters."""

from __future__ import annotations

import math

__all__ = ["summary_text"]


def summary_text(model) -> str:
    """The summary of a built ``model`` as text: a header naming the backend, dtype and input
    shape, one row per layer (name, settings, per-sample output shape ``(N, ...)``, parameter
    count), the total, and the number of buffered values if any."""
    rows = []
    shape = model.input_shape
    for i, layer in enumerate(model.layers):
        shape = layer.output_shape(shape)
        label = layer.name if layer.name == type(layer).__name__ else (
            f"{layer.name} ({type(layer).__name__})")
        rows.append((f"{i:>2} {label}", layer.describe(),
                     "(N, " + ", ".join(map(str, shape)) + ")", f"{layer.num_params():,}"))
    head = ("Layer", "Settings", "Output shape", "Params")
    widths = [max(len(h), *(len(r[k]) for r in rows)) for k, h in enumerate(head)]

    def fmt(cells):
        return "  ".join(c.rjust(w) if k == 3 else c.ljust(w)
                         for k, (c, w) in enumerate(zip(cells, widths)))

    line = "-" * (sum(widths) + 6)
    out = [f"{type(model).__name__} on {model.backend.description}, {model.dtype_name}, "
           f"input (N, {', '.join(map(str, model.input_shape))})", line, fmt(head), line]
    out += [fmt(r) for r in rows]
    out += [line, f"Total params: {model.num_params():,}"]
    buffers = sum(math.prod(b.shape) for b in model.buffers())
    if buffers:
        out.append(f"Buffers (running statistics, not trained): {buffers:,}")
    return "\n".join(out)
