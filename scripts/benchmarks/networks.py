"""The network benchmark (``--networks``): a training step and an inference batch of each
network in :func:`.twins.networks`, portacnn against its PyTorch twin, at 1 thread and at every
core, all four contenders A/B interleaved in one process (the order rotates every run), plus
the peak memory of each.

Threads: BLAS pools capped with the backend's ``limit_threads`` (threadpoolctl), PyTorch's with
``torch.set_num_threads``. Each time is the wall clock's; the calling thread's CPU time is kept
beside it (``*_cpu_ms``, ``cpu_ratio``): at 1 thread it is all the work without the time slices
other programs took (the process's CPU time would also count pool threads still spinning after a
2-thread run), at more threads only the calling thread's share. Memory: ``peak_mib`` is
portacnn's traced peak of one step above what was live before it (tracemalloc sees every NumPy
allocation; it cannot see PyTorch's, so the PyTorch side has none); ``rss_growth_mib``
(``--rss``) is the growth of the resident set over one first step in a fresh child process, both
sides alike: the kernel's high-water mark reset with ``/proc/self/clear_refs`` after the model
and data exist, then read after the step.

Speed: ``flops`` is the row's FLOPs a call (:func:`.flops.step_flops`, counted from the
model); each thread count's entry turns both medians into GFLOP/s and, given the machine's
single-thread SGEMM peak, into the fraction of ``threads x peak`` (``*_of_peak``);
``sgemm_at_shapes_gflops`` is what NumPy's products of the row's own shapes reach at one thread
(:func:`.sgemm.shapes_gflops`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from portacnn.optim import SGD

from .common import LR, MOMENTUM, peak_bytes, summarize
from .flops import gemm_shapes, step_flops
from .sgemm import shapes_gflops
from .twins import networks, torch_twin


def batch(input_shape, n, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, *input_shape), dtype=np.float32)
    return x, rng.integers(0, 10, n).astype(np.int64)


class Pair:
    """One network in portacnn and in torch, with an optimizer each and a batch on both."""

    def __init__(self, name, build, input_shape, backend, torch, batch_size, infer_batch):
        self.backend, self.torch = backend, torch
        self.model = build(backend, "float32")
        self.net, self.same_weights = torch_twin(name, self.model, torch)
        self.opt = SGD(LR, momentum=MOMENTUM)
        self.topt = torch.optim.SGD(self.net.parameters(), lr=LR, momentum=MOMENTUM)
        x, y = batch(input_shape, batch_size)
        self.x, self.y = backend.asarray(x), backend.asarray(y)
        self.xt, self.yt = torch.from_numpy(x), torch.from_numpy(y)
        self.xi, _ = batch(input_shape, infer_batch, seed=1)
        self.xit = torch.from_numpy(self.xi)

    def ours_train(self):
        loss, _ = self.model.train_step(self.x, self.y, self.opt)
        return float(self.backend.to_numpy(loss))

    def theirs_train(self):
        self.net.train()
        self.topt.zero_grad(set_to_none=True)
        loss = self.torch.nn.functional.cross_entropy(self.net(self.xt), self.yt)
        loss.backward()
        self.topt.step()
        return float(loss.detach())

    def ours_infer(self):
        self.model.predict(self.xi, batch_size=len(self.xi))

    def theirs_infer(self):
        self.net.eval()
        with self.torch.inference_mode():
            self.torch.softmax(self.net(self.xit), dim=1)


def bench_networks(backend, torch, threads, repeats, batch_size, infer_batch, steps,
                   rss=False, script=None, only=None, peak_gflops=None, log=print):
    """One row per network and mode (train / infer); see the module docstring. With
    ``peak_gflops`` (the single-thread SGEMM peak, :func:`.sgemm.square_peak`) each thread
    count's entry also says which fraction of ``threads x peak_gflops`` each side reached."""
    rows, shapes = [], []
    for name, (build, input_shape, note) in networks().items():
        if only and name not in only:
            continue
        if build is None:
            rows.append({"network": name, "skipped": note})
            log(f"    {name}: {note}")
            continue
        pair = Pair(name, build, input_shape, backend, torch, batch_size, infer_batch)
        first = {"portacnn": pair.ours_train(), "torch": pair.theirs_train()}
        for mode in ("train", "infer"):
            row = {"network": name, "mode": mode, "source": note,
                   "batch": batch_size if mode == "train" else infer_batch,
                   "same_initial_weights": pair.same_weights, "by_threads": {}}
            if mode == "train":
                row["first_step_loss"] = first
            row["flops"] = step_flops(pair.model, row["batch"])[mode]
            shapes.append((row, gemm_shapes(pair.model, row["batch"], mode)))
            fns = {"portacnn": getattr(pair, f"ours_{mode}"),
                   "torch": getattr(pair, f"theirs_{mode}")}
            times, cpu = _interleaved(backend, torch, fns, threads, repeats,
                                      steps if mode == "train" else 1)
            for t in threads:
                ours, theirs = times["portacnn", t], times["torch", t]
                row["by_threads"][str(t)] = {
                    "portacnn_ms": summarize([s * 1e3 for s in ours]),
                    "torch_ms": summarize([s * 1e3 for s in theirs]),
                    "ratio": summarize([a / b for a, b in zip(ours, theirs)]),
                    "portacnn_cpu_ms": summarize([s * 1e3 for s in cpu["portacnn", t]]),
                    "torch_cpu_ms": summarize([s * 1e3 for s in cpu["torch", t]]),
                    "cpu_ratio": summarize([a / b for a, b in zip(cpu["portacnn", t],
                                                                   cpu["torch", t])])}
                row["by_threads"][str(t)].update(_rates(row, t, peak_gflops))
            with backend.limit_threads(1):
                peak = peak_bytes(fns["portacnn"], backend)
            row["peak_mib"] = {"portacnn_traced": None if peak is None else peak / 2**20}
            if rss and script is not None:
                row["rss_growth_mib"] = {side: rss_child(script, name, side, mode, batch_size,
                                                         infer_batch)
                                         for side in ("portacnn", "torch")}
            rows.append(row)
            log(format_row(row))
    for row, products in shapes:       # after every timing: their buffers reach 300 MiB
        row["sgemm_at_shapes_gflops"] = shapes_gflops(products)
    return rows


def _rates(row, threads, peak_gflops):
    """GFLOP/s of each side's median time at ``threads`` and, with the peak, the fraction of
    ``threads x peak_gflops`` it is."""
    entry, out = row["by_threads"][str(threads)], {}
    for side in ("portacnn", "torch"):
        gflops = row["flops"] / (entry[f"{side}_ms"]["median"] * 1e-3) / 1e9
        out[f"{side}_gflops"] = gflops
        if peak_gflops:
            out[f"{side}_of_peak"] = gflops / (threads * peak_gflops)
    return out


def _interleaved(backend, torch, fns, threads, repeats, steps):
    """Seconds per call of each (side, threads), median-ready lists; run 0 is a warm-up and
    the contenders' order rotates every run."""
    contenders = [(side, t) for t in threads for side in ("portacnn", "torch")]
    times = {c: [] for c in contenders}
    cpu = {c: [] for c in contenders}
    for r in range(repeats + 1):
        k = r % len(contenders)
        for side, t in contenders[k:] + contenders[:k]:
            with backend.limit_threads(t):
                torch.set_num_threads(t)
                t0, c0 = time.perf_counter(), time.thread_time()
                for _ in range(steps):
                    fns[side]()
                seconds = (time.perf_counter() - t0) / steps
                cpu_seconds = (time.thread_time() - c0) / steps
            if r:
                times[side, t].append(seconds)
                cpu[side, t].append(cpu_seconds)
    torch.set_num_threads(1)
    return times, cpu


def format_row(row) -> str:
    if "skipped" in row:
        return f"    {row['network']}: {row['skipped']}"
    parts = []
    for t, entry in row["by_threads"].items():
        parts.append(f"{t} thr {entry['portacnn_ms']['median']:.1f} / "
                     f"{entry['torch_ms']['median']:.1f} ms = {entry['ratio']['median']:.2f}x, "
                     f"{entry['portacnn_gflops']:.1f} / {entry['torch_gflops']:.1f} GFLOP/s")
    mem = row["peak_mib"]["portacnn_traced"]
    text = (f"    {row['network']:<10} {row['mode']:<5} batch {row['batch']:>3}: "
            + "; ".join(parts) + ("" if mem is None else f"; traced peak {mem:.1f} MiB"))
    if "rss_growth_mib" in row:
        text += "; RSS +{portacnn:.1f} / +{torch:.1f} MiB".format(**row["rss_growth_mib"])
    return text


# --- peak resident memory, one child process per row ------------------------------------------

def rss_child(script, name, side, mode, batch_size, infer_batch):
    """Growth of the resident set (MiB) over one first ``mode`` call of ``side`` in a fresh
    ``python script --rss-child ...`` process (None if the child failed)."""
    command = [sys.executable, str(script), "--rss-child",
               json.dumps([name, side, mode, batch_size, infer_batch])]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])["rss_growth_mib"]


def rss_child_main(spec, backend, torch):
    """Inside the child: build the pair, reset the high-water mark, run one call, print the
    growth as JSON."""
    name, side, mode, batch_size, infer_batch = json.loads(spec)
    build, input_shape, _ = networks()[name]
    torch.set_num_threads(1)
    with backend.limit_threads(1):
        pair = Pair(name, build, input_shape, backend, torch, batch_size, infer_batch)
        fn = getattr(pair, f"{'ours' if side == 'portacnn' else 'theirs'}_{mode}")
        before = _status_kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")        # VmHWM := VmRSS
        fn()
        peak = _status_kib("VmHWM")
    print(json.dumps({"rss_growth_mib": (peak - before) / 1024}))
    return 0


def _status_kib(field):
    for line in Path(f"/proc/{os.getpid()}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")

