"""A model's ``summary`` table: each layer's name, settings, output shape and parameters, and
for a graph model the tensors each layer takes."""

from __future__ import annotations

import math

__all__ = ["summary_text"]


def summary_text(model) -> str:
    """The summary of a built ``model`` as text: a header naming the backend, dtype and input
    shape, one row per entry of ``model.summary_rows()`` (index, name, settings, per-sample
    output shape ``(N, ...)``, parameter count, and an ``Inputs`` column where a row names
    its inputs), the total, and the number of buffered values if any. A layer that appears
    in several rows (one shared by several calls) counts its parameters in its first row."""
    rows, counted, graph = [], set(), False
    for i, layer, shape, inputs in model.summary_rows():
        label = layer.name if layer.name == type(layer).__name__ else (
            f"{layer.name} ({type(layer).__name__})")
        params = "shared" if id(layer) in counted and layer.params else f"{layer.num_params():,}"
        counted.add(id(layer))
        graph = graph or inputs is not None
        rows.append((f"{i:>2} {label}", layer.describe(),
                     "(N, " + ", ".join(map(str, shape)) + ")", params, inputs or ""))
    head = ("Layer", "Settings", "Output shape", "Params", "Inputs")
    if not graph:
        head, rows = head[:4], [row[:4] for row in rows]
    widths = [max(len(h), *(len(r[k]) for r in rows)) for k, h in enumerate(head)]

    def fmt(cells):
        return "  ".join(c.rjust(w) if k == 3 else c.ljust(w)
                         for k, (c, w) in enumerate(zip(cells, widths))).rstrip()

    line = "-" * (sum(widths) + 2 * (len(widths) - 1))
    out = [f"{type(model).__name__} on {model.backend.description}, {model.dtype_name}, "
           f"input (N, {', '.join(map(str, model.input_shape))})", line, fmt(head), line]
    out += [fmt(r) for r in rows]
    out += [line, f"Total params: {model.num_params():,}"]
    buffers = sum(math.prod(b.shape) for b in model.buffers())
    if buffers:
        out.append(f"Buffers (running statistics, not trained): {buffers:,}")
    return "\n".join(out)
