"""The compiled-step benchmark (``--compile``, run with ``--device jax``): one training step of
LeNet-5 and the small VGG compiled by ``jax.jit`` (``fit(..., compile=True)``'s step,
:class:`portacnn.training.compiled.CompiledTraining`) against the same step eager on JAX, on
NumPy (the CPU's kernel set) and in PyTorch, at 1 thread, the contenders' order rotating every
run; and the compiled step's first call (tracing and compiling).

Each side starts from the same weights (the same seed) and trains on the same batch with SGD
and momentum. JAX dispatches asynchronously, so each timed run ends by reading the loss and
every parameter back (for the NumPy side the same read costs nothing). JAX's own CPU threads
are set by ``XLA_FLAGS`` before it is imported (one thread:
``--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1``); the report keeps the
flags the run had.
"""

from __future__ import annotations

import os
import time

from portacnn import get_backend
from portacnn.optim import SGD
from portacnn.training import train_step
from portacnn.training.compiled import CompiledTraining

from .common import LR, MOMENTUM, summarize
from .networks import batch
from .twins import networks, torch_twin

CONTENDERS = ("compiled_jax", "eager_jax", "numpy", "torch")


def _steps(name, build, input_shape, backend, torch, batch_size):
    """``{contender: run()}``: one training step each, ending with its results on the host;
    and the seconds of the compiled step's first call."""
    x, y = batch(input_shape, batch_size)
    runs = {}
    for contender, device in (("compiled_jax", backend), ("eager_jax", backend),
                              ("numpy", get_backend("numpy"))):
        model = build(device, "float32")
        xb, yb = device.asarray(x), device.asarray(y)
        opt = SGD(LR, momentum=MOMENTUM)
        step = (CompiledTraining(model, opt, train_step) if contender == "compiled_jax" else
                lambda xb, yb, model=model, opt=opt: train_step(model, xb, yb, opt))

        def run(step=step, xb=xb, yb=yb, model=model):
            loss, _ = step(xb, yb)
            for p in model.parameters():
                model.backend.to_numpy(p.value)
            return float(model.backend.to_numpy(loss))

        runs[contender] = run
    t0 = time.perf_counter()
    runs["compiled_jax"]()
    compile_s = time.perf_counter() - t0
    if torch is not None:
        net, _ = torch_twin(name, build(get_backend("numpy"), "float32"), torch)
        topt = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM)
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)

        def theirs():
            net.train()
            topt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(net(xt), yt)
            loss.backward()
            topt.step()
            return float(loss.detach())

        runs["torch"] = theirs
    return runs, compile_s


def bench_compiled(backend, torch, repeats: int, batch_size: int, steps: int, only=None):
    """Rows ``{network, batch, compile_s, ms: {contender: summary}, eager_over_compiled,
    compiled_over_numpy, compiled_over_torch}``: milliseconds a training step, medians of
    ``repeats`` runs of ``steps`` steps each, at 1 thread."""
    rows = []
    if torch is not None:
        torch.set_num_threads(1)
    with backend.limit_threads(1):
        for name, (build, input_shape, _) in networks().items():
            if build is None or (only and name not in only) or name == "resnet20":
                continue
            runs, compile_s = _steps(name, build, input_shape, backend, torch, batch_size)
            for run in runs.values():
                run()                                   # warm-up: eager JAX's first calls
            times = {c: [] for c in runs}
            order = list(runs)
            for r in range(repeats):
                for contender in order[r % len(order):] + order[:r % len(order)]:
                    t0 = time.perf_counter()
                    for _ in range(steps):
                        runs[contender]()
                    times[contender].append((time.perf_counter() - t0) / steps * 1e3)
            ms = {c: summarize(t) for c, t in times.items()}
            compiled = ms["compiled_jax"]["median"]
            row = {"network": name, "batch": batch_size, "steps_a_run": steps,
                   "compile_s": compile_s, "ms": ms,
                   "eager_over_compiled": ms["eager_jax"]["median"] / compiled,
                   "compiled_over_numpy": compiled / ms["numpy"]["median"]}
            if "torch" in ms:
                row["compiled_over_torch"] = compiled / ms["torch"]["median"]
            rows.append(row)
            print(line(row), flush=True)
    return {"threads": 1, "xla_flags": os.environ.get("XLA_FLAGS", ""), "rows": rows}


def line(row) -> str:
    """One network's figures as a line of text."""
    cells = ", ".join(f"{c} {row['ms'][c]['median']:.1f}" for c in CONTENDERS if c in row["ms"])
    return (f"  {row['network']}, batch {row['batch']}: {cells} ms a step; compiled "
            f"{row['eager_over_compiled']:.1f}x faster than eager JAX, "
            f"{row['compiled_over_numpy']:.2f}x NumPy's time; first call "
            f"{row['compile_s']:.1f} s")


def markdown(section) -> str:
    """The rows as a markdown table (docs/performance.md)."""
    lines = ["| network, batch | compiled JAX ms | eager JAX ms | NumPy ms | PyTorch ms | "
             "eager / compiled | compiled / NumPy | first call s |",
             "|---|---|---|---|---|---|---|---|"]
    for row in section["rows"]:
        ms = {c: (f"{row['ms'][c]['median']:.1f}" if c in row["ms"] else "n/a")
              for c in CONTENDERS}
        lines.append(f"| {row['network']}, {row['batch']} | {ms['compiled_jax']} | "
                     f"{ms['eager_jax']} | {ms['numpy']} | {ms['torch']} | "
                     f"{row['eager_over_compiled']:.1f}x | {row['compiled_over_numpy']:.2f}x | "
                     f"{row['compile_s']:.1f} |")
    return "\n".join(lines)

