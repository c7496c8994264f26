#!/usr/bin/env python
"""Benchmark portacnn's LeNet-5 on any backend, optionally against PyTorch in the same run.

    python scripts/bench.py --device cpu --compare-torch --compare-tutorial --json bench.json
    python scripts/bench.py --device gpu --compare-torch   # CuPy and PyTorch on one GPU
    python scripts/bench.py --quick                 # 6,000 images, fewer repeats
    python scripts/bench.py --data-parallel 2 --compare-torch   # runs mpiexec -n 2 itself

What it measures, at each thread count in ``--threads`` (every CPU pool capped alike: BLAS via
threadpoolctl and ``torch.set_num_threads`` for PyTorch), with the backend's kernel overrides
(``--portable``: the portable kernels alone) and glibc's allocator set to keep freed memory, as
the training command does (:func:`portacnn.allocator.keep_freed_memory`):

- per-layer forward and backward time of LeNet-5 at ``--batch-size``;
- a full training epoch (forward, backward, SGD-momentum step) over ``--images`` MNIST-shaped
  images (the bundled sample tiled), through ``Sequential.fit``; with ``--compare-torch`` the
  same network written in ``torch.nn``, started from the same weights and trained on the same
  batches in the same order, A/B interleaved with portacnn, reporting portacnn/PyTorch;
- inference throughput (images/s) at several batch sizes;
- with ``--compare-tutorial``, the tutorial-style NumPy implementation (fancy-index im2col,
  ``np.add.at`` col2im: scripts/tutorial_lenet.py) and portacnn on the same subset
  (``--tutorial-images``), A/B interleaved, both scaled to the epoch;

and once: time per image as the batch grows (16 ... 512) and as the image grows (28, 56, 112
pixels on a side) with the peak memory of each (``Backend.memory_peak``: tracemalloc for
NumPy, the highest use of CuPy's memory pool, ``torch.cuda.max_memory_allocated``), and memory
from epoch to epoch. Each timing is preceded by a warm-up run; the table shows the median and
the [min - max] of ``--repeats`` runs. The shuffled copy of each epoch's data is made, and
moved to the device, before its clock starts, for both sides.

On a GPU (``--device gpu`` / ``cuda:N``) PyTorch runs on the same CUDA device, both sides are
synchronised before every clock read, only the first of ``--threads`` is used (threads do not
change a GPU's speed), and the header names the GPU, the driver, the CUDA runtime and CuPy.
PyTorch's TF32 (on by default for cuDNN's float32 convolutions on Ampere and newer GPUs) is
turned off, as CuPy computes float32 in full: both sides do the same arithmetic, and the
report says so (``torch_tf32``: false).

``--data-parallel N`` runs only the data-parallel section, in an ``mpiexec -n N`` job it starts
itself: training epochs at the global batches ``--dp-batches`` for one process (1 and N BLAS
threads), N processes of 1 thread (``portacnn.distributed.DataParallel``) and, with
``--compare-torch``, PyTorch at N threads, A/B interleaved; the time of one gradient sum; and
what a simple model (step = compute / processes + fixed cost + sum) predicts for 8 processes
and for two nodes.

The machine's speed drifts, so read ratios between peers measured in the same run, not the
absolute seconds.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

# the checkout's portacnn without an install; scripts/ for tutorial_lenet (also under python -I)
sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

import portacnn  # noqa: E402
from portacnn import AvgPool2D, Conv2D, Dense, Flatten, Sequential, Tanh, distributed  # noqa: E402
from portacnn.allocator import keep_freed_memory  # noqa: E402
from portacnn.data import load_sample, normalize  # noqa: E402
from portacnn.models import lenet5  # noqa: E402
from portacnn.optim import SGD  # noqa: E402

LR, MOMENTUM = 0.01, 0.9


# --- helpers --------------------------------------------------------------------------------

def summarize(times):
    return {"median": statistics.median(times), "min": min(times), "max": max(times),
            "runs": len(times)}


def fmt(stat, unit="s", scale=1.0):
    return (f"{stat['median'] * scale:.3f} [{stat['min'] * scale:.3f}-{stat['max'] * scale:.3f}]"
            f" {unit}")


def dataset(n, dtype):
    (x, y), _ = load_sample()
    reps = math.ceil(n / len(x))
    x = np.concatenate([x] * reps)[:n]
    y = np.concatenate([y] * reps)[:n].astype(np.int64)
    return normalize(x, dtype=dtype), y


class Peer:
    """PyTorch, the peer: the module and the device its tensors live on (the GPU portacnn
    runs on, or the CPU).

    PyTorch lets cuDNN's float32 convolutions (and, where allowed, cuBLAS's products) use TF32
    on Ampere and newer GPUs: 10-bit mantissas, faster and less exact. CuPy computes float32
    in full, so the peer turns TF32 off (``tf32`` False) and both sides do the same arithmetic.
    """

    def __init__(self, torch, backend):
        self.torch = torch
        cuda = backend.device_info().get("cuda_device") if backend.accelerator else None
        self.device = torch.device("cpu" if cuda is None else f"cuda:{cuda}")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        self.tf32 = False

    def tensor(self, array):
        return self.torch.from_numpy(np.ascontiguousarray(array)).to(self.device)

    def synchronize(self):
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)


def timed(fn, backend, peer=None):
    """Seconds ``fn()`` takes, every device synchronised before each clock read."""
    syncs = [backend.synchronize] + ([peer.synchronize] if peer is not None else [])
    for sync in syncs:
        sync()
    t0 = time.perf_counter()
    fn()
    for sync in syncs:
        sync()
    return time.perf_counter() - t0


def machine_info(backend):
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "numpy": np.__version__, "portacnn": portacnn.__version__,
            "backend": backend.description, "device": backend.device_info()}


def device_line(info):
    """The header line naming a GPU: "GPU NVIDIA H100 (cuda:0, 79.1 GiB, sm 9.0), driver CUDA
    12.8, runtime 12.9, CuPy 14.2.0"; empty for the CPU."""
    if "gpu" not in info:
        return ""
    return (f"GPU {info['gpu']} (cuda:{info.get('cuda_device')}, {info.get('memory_gib')} GiB, "
            f"sm {info.get('compute_capability')}), driver CUDA {info.get('cuda_driver')}, "
            f"runtime {info.get('cuda_runtime')}, CuPy {info.get('cupy')}, "
            f"NVRTC {info.get('nvrtc')}")


# --- PyTorch peer ---------------------------------------------------------------------------

def torch_lenet(model, peer):
    """LeNet-5 in torch.nn with portacnn's initial weights (same shapes, same layout), on the
    peer's device."""
    torch = peer.torch
    nn = torch.nn
    net = nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.Tanh(), nn.AvgPool2d(2),
        nn.Conv2d(6, 16, 5), nn.Tanh(), nn.AvgPool2d(2), nn.Flatten(),
        nn.Linear(400, 120), nn.Tanh(), nn.Linear(120, 84), nn.Tanh(), nn.Linear(84, 10))
    ours = [layer for layer in model.layers if layer.params]
    theirs = [m for m in net if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        for a, b in zip(ours, theirs):
            b.weight.copy_(torch.from_numpy(model.backend.to_numpy(a.params["weight"])))
            b.bias.copy_(torch.from_numpy(model.backend.to_numpy(a.params["bias"])))
    return net.to(peer.device)


def torch_epoch(net, opt, x, y, batch_size, torch):
    """One epoch in the idiomatic PyTorch loop over ``x``, ``y`` already shuffled and on the
    device, doing the same work as Sequential.fit."""
    F = torch.nn.functional
    net.train()
    total = torch.zeros((), device=x.device)
    hits = torch.zeros((), dtype=torch.int64, device=x.device)
    for start in range(0, len(x), batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        opt.zero_grad(set_to_none=True)
        logits = net(xb)
        loss = F.cross_entropy(logits, yb)
        loss.backward()
        opt.step()
        total += loss.detach() * len(xb)
        hits += (logits.argmax(1) == yb).sum()
    return float(total) / len(x), int(hits) / len(x)


# --- sections -------------------------------------------------------------------------------

def per_layer(backend, batch_size, dtype, repeats, peer=None):
    """Forward and backward time of each LeNet-5 layer on one batch (ms)."""
    model = lenet5(device=backend, dtype=dtype, seed=0)
    x, _ = dataset(batch_size, dtype)
    h = backend.asarray(x)
    inputs = []
    grads = [None] * len(model.layers)
    with backend.activate():                    # layers' private methods are called directly
        for layer in model.layers:
            inputs.append(h)
            h = layer._forward(h)
        g = backend.asarray(np.ones(tuple(h.shape), dtype=dtype))
        for k in reversed(range(len(model.layers))):
            grads[k] = g
            out = model.layers[k]._backward(g)
            g = out if out is not None else g
    rows = []
    tnet = torch_lenet(model, peer) if peer else None
    def ten(fn, arg):
        for _ in range(10):
            fn(arg)                 # results dropped at once, as in training

    for k, layer in enumerate(model.layers):
        with backend.activate():
            fwd = [timed(lambda: ten(layer._forward, inputs[k]), backend) / 10
                   for _ in range(repeats + 1)][1:]
            bwd = [timed(lambda: ten(layer._backward, grads[k]), backend) / 10
                   for _ in range(repeats + 1)][1:]
        row = {"layer": f"{layer.name}", "forward_ms": statistics.median(fwd) * 1e3,
               "backward_ms": statistics.median(bwd) * 1e3}
        if tnet is not None:
            row.update(_torch_layer_times(tnet[k], backend.to_numpy(inputs[k]),
                                          backend.to_numpy(grads[k]), repeats, peer))
        rows.append(row)
    return rows


def _torch_layer_times(module, x, g, repeats, peer):
    xt = peer.tensor(x).requires_grad_(True)
    gt = peer.tensor(g)
    fwd, bwd = [], []

    def forward():
        for _ in range(10):
            module(xt)

    def forward_backward():
        for _ in range(10):
            module(xt).backward(gt)

    for _ in range(repeats + 1):
        fwd.append(_peer_timed(forward, peer) / 10)
        bwd.append(_peer_timed(forward_backward, peer) / 10 - fwd[-1])
    return {"torch_forward_ms": statistics.median(fwd[1:]) * 1e3,
            "torch_backward_ms": max(statistics.median(bwd[1:]), 0.0) * 1e3}


def _peer_timed(fn, peer):
    peer.synchronize()
    t0 = time.perf_counter()
    fn()
    peer.synchronize()
    return time.perf_counter() - t0


def train_epochs(backend, args, threads, peer=None):
    """Epoch times for portacnn (and PyTorch, interleaved A/B) at one thread count. Each
    epoch's shuffled copy is gathered and moved to the device before the clock starts."""
    x, y = dataset(args.images, args.dtype)
    orders = [np.random.default_rng(r).permutation(len(x)) for r in range(args.repeats + 1)]
    model = lenet5(device=backend, dtype=args.dtype, seed=0)
    opt = SGD(LR, momentum=MOMENTUM)
    results = {"portacnn": [], "torch": [], "portacnn_loss": [], "torch_loss": []}
    if peer is not None:
        torch = peer.torch
        net = torch_lenet(model, peer)
        topt = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM)

    def run_ours(data):
        hist = model.fit(*data, epochs=1, batch_size=args.batch_size, optimizer=opt,
                         shuffle=False, verbose=0)
        results["portacnn_loss"].append(hist["loss"][0])

    def run_torch(data):
        loss, _ = torch_epoch(net, topt, *data, args.batch_size, torch)
        results["torch_loss"].append(loss)

    for r, order in enumerate(orders):          # run 0 is the warm-up
        pair = [("portacnn", run_ours)] + ([("torch", run_torch)] if peer is not None else [])
        if r % 2:
            pair.reverse()                      # A/B, then B/A: drift hits both alike
        this_run = {}
        for name, fn in pair:
            if name == "portacnn":
                data = (backend.asarray(x[order], dtype=args.dtype), backend.asarray(y[order]))
            else:
                data = (peer.tensor(x[order]), peer.tensor(y[order]))
            gc.collect()
            this_run[name] = timed(lambda: fn(data), backend, peer)
            del data
            if r > 0:
                results[name].append(this_run[name])
        print(f"    epoch run {r}{' (warm-up)' if r == 0 else ''}: "
              + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in this_run.items()),
              flush=True)
    out = {"threads": threads, "portacnn": summarize(results["portacnn"]),
           "portacnn_loss_first_epoch": results["portacnn_loss"][0]}
    if peer is not None:
        out["torch"] = summarize(results["torch"])
        out["torch_loss_first_epoch"] = results["torch_loss"][0]
        ratios = [a / b for a, b in zip(results["portacnn"], results["torch"])]
        out["ratio_portacnn_over_torch"] = summarize(ratios)
    return out


def inference(backend, args, peer=None):
    """Images per second of predict() at several batch sizes (higher is better), A/B
    interleaved with PyTorch when it is given. The images start on the host for both."""
    n = min(args.images, 10_000)
    x, _ = dataset(n, args.dtype)
    model = lenet5(device=backend, dtype=args.dtype, seed=0)
    rows = []
    net = torch_lenet(model, peer).eval() if peer is not None else None
    torch = peer.torch if peer is not None else None
    tx = torch.from_numpy(x) if peer is not None else None

    def run_torch(bs):
        with torch.inference_mode():
            for s in range(0, n, bs):
                torch.softmax(net(tx[s:s + bs].to(peer.device)), dim=1)

    for bs in args.infer_batches:
        ours, theirs = [], []
        for r in range(args.repeats + 1):              # run 0 is the warm-up
            pair = [(ours, lambda: model.predict(x, batch_size=bs))]
            if net is not None:
                pair.append((theirs, lambda: run_torch(bs)))
            if r % 2:
                pair.reverse()
            for out, fn in pair:
                seconds = timed(fn, backend, peer)
                if r:
                    out.append(n / seconds)
        row = {"batch_size": bs, "portacnn_images_per_s": summarize(ours)}
        if theirs:
            row["torch_images_per_s"] = summarize(theirs)
            row["ratio_portacnn_over_torch"] = summarize([a / b for a, b in zip(ours, theirs)])
        rows.append(row)
    return rows


def tutorial(backend, args):
    """Tutorial-style NumPy LeNet-5 and portacnn on the same subset, A/B interleaved; each
    side's time scaled to an epoch of --images."""
    from tutorial_lenet import TutorialLeNet

    n = min(args.tutorial_images, args.images)
    x, y = dataset(n, args.dtype)
    net = TutorialLeNet(lenet5(seed=0), lr=LR, momentum=MOMENTUM)
    model = lenet5(device=backend, dtype=args.dtype, seed=0)
    opt = SGD(LR, momentum=MOMENTUM)

    def run_tutorial():
        for s in range(0, n, args.batch_size):
            net.train_step(x[s:s + args.batch_size], y[s:s + args.batch_size])

    def run_ours():
        model.fit(x, y, epochs=1, batch_size=args.batch_size, optimizer=opt, shuffle=False,
                  verbose=0)

    theirs, ours = [], []
    for r in range(args.repeats + 1):                # run 0 is the warm-up
        pair = [(theirs, run_tutorial), (ours, run_ours)]
        if r % 2:
            pair.reverse()
        for out, fn in pair:
            seconds = timed(fn, backend) * args.images / n
            if r:
                out.append(seconds)
    return {"images_timed": n, "epoch_seconds_scaled": summarize(theirs),
            "portacnn_epoch_seconds_scaled": summarize(ours),
            "speedup_portacnn_over_tutorial": summarize([a / b for a, b in zip(theirs, ours)])}


def _peak_bytes(fn, backend):
    """The peak memory ``fn()`` allocates on the backend's device (None if unknown)."""
    with backend.memory_peak() as peak:
        fn()
        backend.synchronize()
    return peak.bytes


def _lenet_for(size, backend, dtype):
    """LeNet-5's layers for a size x size input (the first dense layer grows with it)."""
    return Sequential([Conv2D(6, 5, padding=2), Tanh(), AvgPool2D(2), Conv2D(16, 5), Tanh(),
                       AvgPool2D(2), Flatten(), Dense(120), Tanh(), Dense(84), Tanh(),
                       Dense(10)], input_shape=(1, size, size), device=backend, dtype=dtype)


def scaling(backend, args):
    """Training time per image and peak memory as the batch and the image grow."""
    rows = []
    configs = [(bs, 28) for bs in args.scale_batches] + [(64, s) for s in (56, 112)]
    for bs, size in configs:
        model = _lenet_for(size, backend, args.dtype)
        opt = SGD(LR, momentum=MOMENTUM)
        steps = max(2, min(40, 2048 // bs)) if size == 28 else 6
        rng = np.random.default_rng(0)
        x = backend.asarray(rng.normal(size=(bs, 1, size, size)), dtype=args.dtype)
        y = backend.asarray(rng.integers(0, 10, bs))
        model.train_step(x, y, opt)                               # warm-up
        per_image = []
        for _ in range(args.repeats):
            t = timed(lambda: [model.train_step(x, y, opt) for _ in range(steps)], backend)
            per_image.append(t / (steps * bs))
        peak = _peak_bytes(lambda: model.train_step(x, y, opt), backend)
        rows.append({"batch_size": bs, "image_size": size, "us_per_image": summarize(
            [p * 1e6 for p in per_image]), "peak_mib": None if peak is None else peak / 2**20})
    return rows


MEMORY_EPOCHS = 8


def memory_over_epochs(backend, args):
    """Traced memory after each of MEMORY_EPOCHS epochs: it should not grow. (NumPy's and
    Python's small-object caches fill up over the first few epochs, some KiB in all; a leak
    would grow with every epoch.)"""
    x, y = dataset(min(args.images, 6000), args.dtype)
    model = lenet5(device=backend, dtype=args.dtype, seed=0)
    opt = SGD(LR, momentum=MOMENTUM)
    if not backend.host_memory_traced:
        return None
    tracemalloc.start()
    try:
        out = []
        for _ in range(MEMORY_EPOCHS):
            model.fit(x, y, epochs=1, batch_size=args.batch_size, optimizer=opt, verbose=0)
            gc.collect()
            out.append(tracemalloc.get_traced_memory()[0] / 2**20)
        return out
    finally:
        tracemalloc.stop()


# --- data parallel (MPI) --------------------------------------------------------------------
# Links assumed for the two-node predictions: (bytes/s, latency in s) of typical MPI transports.
NETWORKS = {"10 Gb/s Ethernet": (1.25e9, 50e-6), "100 Gb/s InfiniBand": (12.5e9, 2e-6)}
REDUCTION_CALLS = 200


def relaunch_under_mpiexec(processes, argv):
    """Run this script again as ``mpiexec --bind-to none -n processes python bench.py ARGV``:
    the data-parallel section runs inside that job. Open MPI binds each process to one core by
    default, which would run the multi-threaded one-process peers on a single core. Returns the
    job's exit status."""
    import shutil
    import subprocess

    beside = Path(sys.executable).parent / "mpiexec"        # the virtual environment's MPI
    mpiexec = str(beside) if beside.exists() else shutil.which("mpiexec")
    if mpiexec is None:
        print('--data-parallel needs mpiexec: pip install "portacnn[mpi]"', file=sys.stderr)
        return 2
    command = [mpiexec, "--bind-to", "none", "-n", str(processes), sys.executable,
               str(Path(__file__).resolve()), *argv]
    print("running:", " ".join(command), flush=True)
    return subprocess.call(command)


def _run_timed(comm, fn, everyone, sync):
    """Seconds ``fn`` took on rank 0. ``everyone``: every rank runs it (from a barrier);
    otherwise rank 0 runs it alone while the others sleep (polling a non-blocking barrier,
    so they leave rank 0 the other cores instead of spinning in MPI). ``sync()`` waits for
    every device before each clock read: the epoch's shuffled copy, made just before, may
    still be on its way to a GPU."""
    seconds = None
    if everyone:
        comm.Barrier()
    if everyone or comm.rank == 0:
        gc.collect()
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        seconds = time.perf_counter() - t0
    request = comm.Ibarrier()
    while not request.Test():
        time.sleep(0.002)
    return comm.bcast(seconds, root=0)


def _sum_seconds(dp, values, reduction):
    """Median over 3 rounds of the time of one gradient sum of ``values`` float32 values
    (REDUCTION_CALLS calls in lockstep a round)."""
    flat = dp.model.backend.asarray(np.ones(values, dtype=np.float32))
    dp.reduction = reduction
    rounds = []
    for _ in range(3):
        dp.comm.Barrier()
        t0 = time.perf_counter()
        for _ in range(REDUCTION_CALLS):
            dp.allreduce(flat)
        rounds.append((time.perf_counter() - t0) / REDUCTION_CALLS)
    dp.reduction = "ordered"
    return dp.comm.bcast(statistics.median(rounds), root=0)


def data_parallel(backend, args, peer=None):
    """Training epochs at each global batch in --dp-batches, A/B interleaved: one process at 1
    and at R BLAS threads, R processes of 1 thread each (DataParallel), and PyTorch at R
    threads; then the time of one gradient sum and what the two predict for more processes.
    Runs inside an mpiexec job of R processes."""
    from portacnn import distributed

    comm = distributed.world()
    ranks = comm.size
    x, y = dataset(args.images, args.dtype)
    orders = [np.random.default_rng(r).permutation(len(x)) for r in range(args.repeats + 1)]
    labels = {"one": "1 process, 1 thread", "wide": f"1 process, {ranks} threads",
              "dp": f"{ranks} processes, 1 thread each", "torch": f"PyTorch, {ranks} threads"}
    out = {"processes": ranks, "labels": labels, "batches": [],
           "load_average_before": os.getloadavg()}
    for batch in args.dp_batches:
        models = {key: lenet5(device=backend, dtype=args.dtype, seed=0)
                  for key in ("one", "wide", "dp")}
        dp = distributed.DataParallel(models["dp"])
        runners = {"one": models["one"], "wide": models["wide"], "dp": dp}
        optimizers = {key: SGD(LR, momentum=MOMENTUM) for key in runners}
        losses = {}

        def epoch(key, data):
            with backend.limit_threads(ranks if key == "wide" else 1):
                hist = runners[key].fit(*data, epochs=1, batch_size=batch,
                                        optimizer=optimizers[key], shuffle=False, verbose=0)
            losses.setdefault(key, hist["loss"][0])

        contenders = ["one", "wide", "dp"]
        if peer is not None:
            torch = peer.torch
            net = torch_lenet(models["one"], peer)
            topt = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM)
            contenders.append("torch")

        def run(key, data):
            if key != "torch":
                return epoch(key, data)
            torch.set_num_threads(ranks)
            losses.setdefault("torch", torch_epoch(net, topt, *data, batch, torch)[0])
            torch.set_num_threads(1)

        def shuffled(key, order):
            """The epoch's shuffled copy, made before the clock starts (as train_epochs)."""
            if key == "torch":
                return peer.tensor(x[order]), peer.tensor(y[order])
            return backend.asarray(x[order], dtype=args.dtype), backend.asarray(y[order])

        def sync():
            backend.synchronize()
            if peer is not None:
                peer.synchronize()

        times = {key: [] for key in contenders}
        for r, order in enumerate(orders):                  # run 0 is the warm-up
            turn = contenders[r % len(contenders):] + contenders[:r % len(contenders)]
            this_run = {}
            for key in turn:
                data = shuffled(key, order)
                this_run[key] = _run_timed(comm, lambda: run(key, data), key == "dp", sync)
                del data
            if r:
                for key, seconds in this_run.items():
                    times[key].append(seconds)
            if comm.rank == 0:
                print(f"    batch {batch}, run {r}{' (warm-up)' if r == 0 else ''}: "
                      + ", ".join(f"{labels[k]} {s:.2f} s" for k, s in this_run.items()),
                      flush=True)
        row = {"batch": batch, "steps": math.ceil(len(x) / batch),
               "epoch_seconds": {k: summarize(v) for k, v in times.items()},
               "first_epoch_loss": losses,
               "speedup_over_one": summarize([a / b for a, b in zip(times["one"], times["dp"])]),
               "speedup_over_wide": summarize([a / b for a, b in zip(times["wide"],
                                                                     times["dp"])])}
        if peer is not None:
            row["ratio_over_torch"] = summarize([a / b for a, b in zip(times["dp"],
                                                                       times["torch"])])
        out["batches"].append(row)
    values = sum(math.prod(p.shape) for p in dp.model.parameters())
    out["gradient_values"] = values
    out["gradient_bytes"] = values * np.dtype(args.dtype).itemsize
    out["sum_seconds"] = {f"{reduction}, {n} values": _sum_seconds(dp, n, reduction)
                          for reduction in ("ordered", "mpi") for n in (1, values)}
    out["load_average_after"] = os.getloadavg()
    out["model"] = _predict_scaling(out)
    return out


def _predict_scaling(out):
    """Fit ``step = c * rows + o + t_sum`` to the fastest measured one-process and R-process
    steps (the runs least disturbed by other work on the machine; c:
    compute per row; o: the per-step cost no shard divides, which also takes in any slowdown of
    R processes running at once) and predict ``t_sum = (k-1) * (latency + S / bandwidth)``, the
    ordered sum of k processes as a ring Allgather (k-1 rounds; each process receives (k-1)·S
    bytes). This machine's latency and bandwidth come from the measured sums of 1 and of S
    values; the networks' from NETWORKS."""
    ranks, gradient_bytes = out["processes"], out["gradient_bytes"]
    t_tiny = out["sum_seconds"]["ordered, 1 values"]
    t_full = out["sum_seconds"][f"ordered, {out['gradient_values']} values"]
    latency = t_tiny / (ranks - 1)
    bandwidth = (ranks - 1) * gradient_bytes / max(t_full - t_tiny, 1e-9)
    links = {"shared memory (measured)": (bandwidth, latency), **NETWORKS}
    model = {"latency_s": latency, "bandwidth_bytes_per_s": bandwidth, "fit": [],
             "predictions": []}
    for row in out["batches"]:
        batch, steps = row["batch"], row["steps"]
        step_one = row["epoch_seconds"]["one"]["min"] / steps
        step_dp = row["epoch_seconds"]["dp"]["min"] / steps
        per_row = (step_one - step_dp + t_full) / (batch * (1 - 1 / ranks))
        fixed = max(step_one - per_row * batch, 0.0)
        model["fit"].append({"batch": batch, "step_one_s": step_one, "step_dp_s": step_dp,
                             "sum_share_of_dp_step": t_full / step_dp,
                             "compute_per_row_s": per_row, "fixed_per_step_s": fixed})
        if per_row <= 0:
            continue                # R processes were no faster: the model has nothing to fit
        for k, link in ((8, "shared memory (measured)"), (16, "10 Gb/s Ethernet"),
                        (16, "100 Gb/s InfiniBand")):
            bw, lat = links[link]
            t_sum = (k - 1) * (lat + gradient_bytes / bw)
            step = per_row * batch / k + fixed + t_sum
            model["predictions"].append({
                "batch": batch, "processes": k, "link": link, "sum_s": t_sum, "step_s": step,
                "bytes_received_per_step": (k - 1) * gradient_bytes,
                "speedup_over_one": step_one / step})
    return model


def print_data_parallel(out):
    ranks, labels = out["processes"], out["labels"]
    for row in out["batches"]:
        print(f"  global batch {row['batch']} ({row['steps']} steps an epoch): seconds per epoch "
              f"(first-epoch loss)")
        for key, stat in row["epoch_seconds"].items():
            print(f"    {labels[key]:<28} {fmt(stat)}  ({row['first_epoch_loss'][key]:.5f})")
        print(f"    {labels['dp']} against {labels['one']}: "
              f"{fmt(row['speedup_over_one'], 'x')} as fast; against {labels['wide']}: "
              f"{fmt(row['speedup_over_wide'], 'x')}")
        if "ratio_over_torch" in row:
            print(f"    {labels['dp']} / {labels['torch']}: "
                  f"{fmt(row['ratio_over_torch'], 'x')} of its time")
    print(f"  gradient sum: {out['gradient_values']:,} values = {out['gradient_bytes']:,} bytes "
          f"sent by each process a step (the ordered sum receives {ranks - 1} x that)")
    for name, seconds in out["sum_seconds"].items():
        print(f"    {ranks} processes, {name}: {seconds * 1e6:.0f} us")
    print("  load average (1, 5, 15 min) before: {:.2f} {:.2f} {:.2f}, after: {:.2f} {:.2f} "
          "{:.2f}".format(*out["load_average_before"], *out["load_average_after"]))
    model = out["model"]
    print(f"  model (from the fastest runs): step = c*rows/k + o + (k-1)*(latency + bytes/bandwidth); measured here: "
          f"latency {model['latency_s'] * 1e6:.0f} us, bandwidth "
          f"{model['bandwidth_bytes_per_s'] / 1e9:.2f} GB/s")
    for fit in model["fit"]:
        print(f"    batch {fit['batch']}: step {fit['step_one_s'] * 1e3:.2f} ms in 1 process, "
              f"{fit['step_dp_s'] * 1e3:.2f} ms in {ranks} (the sum is "
              f"{fit['sum_share_of_dp_step']:.1%} of it); c = "
              f"{fit['compute_per_row_s'] * 1e6:.1f} us/row, o = "
              f"{fit['fixed_per_step_s'] * 1e3:.2f} ms/step")
    for p in model["predictions"]:
        print(f"    predicted: batch {p['batch']:>3}, {p['processes']:>2} processes, "
              f"{p['link']:<25} sum {p['sum_s'] * 1e3:6.2f} ms "
              f"({p['bytes_received_per_step'] / 1e6:4.1f} MB in), step "
              f"{p['step_s'] * 1e3:6.2f} ms: {p['speedup_over_one']:4.1f}x one process")


# --- main -----------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="cpu, gpu, cuda:N, or a namespace name")
    p.add_argument("--portable", action="store_true",
                   help="run the portable kernels only, without the backend's overrides "
                        "(what the overrides buy is the difference)")
    p.add_argument("--images", type=int, default=60_000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts to compare at")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--infer-batches", type=lambda s: [int(v) for v in s.split(",")],
                   default=[64, 256, 1024])
    p.add_argument("--scale-batches", type=lambda s: [int(v) for v in s.split(",")],
                   default=[16, 32, 64, 128, 256, 512])
    p.add_argument("--compare-torch", action="store_true",
                   help="also time LeNet-5 written in torch.nn, interleaved")
    p.add_argument("--compare-tutorial", action="store_true",
                   help="also time the tutorial-style NumPy implementation (CPU)")
    p.add_argument("--tutorial-images", type=int, default=3200)
    p.add_argument("--sections", default="layers,train,infer,scaling,memory")
    p.add_argument("--quick", action="store_true", help="6,000 images and 2 repeats")
    p.add_argument("--data-parallel", type=int, default=None, metavar="N",
                   help="only the data-parallel section, under mpiexec -n N (launched here): "
                        "1 process against N processes (and PyTorch with --compare-torch)")
    p.add_argument("--dp-batches", type=lambda s: [int(v) for v in s.split(",")],
                   default=[64, 256], help="global batch sizes of the data-parallel section")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    args = p.parse_args(argv)
    if args.quick:
        args.images, args.repeats = min(args.images, 6000), min(args.repeats, 2)
    args.threads = [int(t) for t in args.threads.split(",")]
    args.sections = set(args.sections.split(","))
    return args


def portable_kernels(kernels):
    """A kernel set with the portable functions but ``kernels``' work sizes (chunks, fused
    updates): what ``--portable`` runs, so that the figure isolates the overrides."""
    class PortableFunctions(portacnn.kernels.Kernels):
        train_chunk = kernels.train_chunk
        infer_chunk = kernels.infer_chunk
        fuse_updates = kernels.fuse_updates

    return PortableFunctions()


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.data_parallel is not None and not distributed.launched_by_mpi():
        return relaunch_under_mpiexec(args.data_parallel, argv)
    torch = None
    if args.compare_torch:
        try:
            import torch
        except ImportError:
            print("--compare-torch needs PyTorch: pip install torch (a CPU build is enough)",
                  file=sys.stderr)
            return 2
    try:
        if args.data_parallel is not None:      # inside the mpiexec job: rank 0 prints
            distributed.silence_unless_root()
            backend = distributed.rank_device(args.device)
        else:
            backend = portacnn.get_backend(args.device)
    except portacnn.DeviceError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 2
    if args.portable:
        backend.kernels = portable_kernels(backend.kernels)   # this instance only
    peer = Peer(torch, backend) if torch is not None else None
    if peer is not None and peer.device.type == "cuda" and not torch.cuda.is_available():
        print(f"bench: error: --compare-torch on {args.device} needs a CUDA build of PyTorch "
              f"(this torch {torch.__version__} has no CUDA); drop --compare-torch or install "
              "one", file=sys.stderr)
        return 2
    if backend.accelerator and len(args.threads) > 1:
        args.threads = args.threads[:1]        # CPU threads do not change a GPU's speed
    allocator_kept = keep_freed_memory()       # as the training command does
    report = {"machine": {**machine_info(backend), "kernels": type(backend.kernels).__name__, "keep_freed_memory": allocator_kept}, "args": {k: (sorted(v) if isinstance(v, set)
              else v) for k, v in vars(args).items() if k != "json"}, "by_threads": []}
    if peer is not None:
        report["machine"]["torch"] = torch.__version__
        report["machine"]["torch_device"] = str(peer.device)
        report["machine"]["torch_tf32"] = peer.tf32        # off: float32 as CuPy computes it
    print("portacnn benchmark:", json.dumps(report["machine"]))
    if device_line(report["machine"]["device"]):
        print(device_line(report["machine"]["device"]))
    if args.data_parallel is not None:
        print(f"LeNet-5, {args.dtype}, {args.images:,} images, SGD lr {LR} momentum {MOMENTUM}, "
              f"median [min-max] of {args.repeats} runs; data parallel over "
              f"{distributed.world().size} processes (mpiexec), BLAS 1 thread each\n")
        report["data_parallel"] = data_parallel(backend, args, peer)
        if distributed.world().rank != 0:
            return 0                            # rank 0 ran the one-process peers and reports
        print_data_parallel(report["data_parallel"])
        if args.json:
            args.json.write_text(json.dumps(report, indent=2))
            print(f"wrote {args.json}")
        return 0
    print(f"LeNet-5, {args.dtype}, batch {args.batch_size}, {args.images:,} images, "
          f"SGD lr {LR} momentum {MOMENTUM}, median [min-max] of {args.repeats} runs\n")
    for threads in args.threads:
        with backend.limit_threads(threads):
            if torch is not None:
                torch.set_num_threads(threads)
            pools = backend.thread_info()
            if torch is not None:
                pools["torch"] = torch.get_num_threads()
            print(f"== threads: {pools}")
            entry = {"threads": threads, "pools": pools}
            if "layers" in args.sections:
                entry["layers"] = per_layer(backend, args.batch_size, args.dtype, args.repeats,
                                            peer)
                print(f"  {'layer':<10} {'fwd ms':>8} {'bwd ms':>8}"
                      + (f" {'torch fwd':>10} {'torch bwd':>10}" if torch else ""))
                for row in entry["layers"]:
                    print(f"  {row['layer']:<10} {row['forward_ms']:8.3f} {row['backward_ms']:8.3f}"
                          + (f" {row['torch_forward_ms']:10.3f} {row['torch_backward_ms']:10.3f}"
                             if torch else ""))
            if "train" in args.sections:
                print(f"  training epoch ({args.images:,} images):")
                tr = entry["train"] = train_epochs(backend, args, threads, peer)
                print(f"  portacnn: {fmt(tr['portacnn'])}")
                if torch is not None:
                    print(f"  pytorch:  {fmt(tr['torch'])}  (TF32 off: float32 as CuPy)")
                    print(f"  ratio portacnn/pytorch: {fmt(tr['ratio_portacnn_over_torch'], 'x')}"
                          f"  (first-epoch loss {tr['portacnn_loss_first_epoch']:.4f} vs "
                          f"{tr['torch_loss_first_epoch']:.4f})")
            if "infer" in args.sections:
                entry["inference"] = inference(backend, args, peer)
                for row in entry["inference"]:
                    line = (f"  inference batch {row['batch_size']:>5}: portacnn "
                            f"{row['portacnn_images_per_s']['median']:>9,.0f} images/s")
                    if "torch_images_per_s" in row:
                        ratio = row["ratio_portacnn_over_torch"]
                        line += (f", pytorch {row['torch_images_per_s']['median']:>9,.0f} images/s"
                                 f", ratio {ratio['median']:.2f}x [{ratio['min']:.2f}-"
                                 f"{ratio['max']:.2f}]")
                    print(line)
            if args.compare_tutorial and threads == args.threads[0] and not backend.accelerator:
                tut = entry["tutorial"] = tutorial(backend, args)
                print(f"  tutorial-style NumPy: {fmt(tut['epoch_seconds_scaled'])} per epoch, "
                      f"portacnn {fmt(tut['portacnn_epoch_seconds_scaled'])} (both scaled from "
                      f"{tut['images_timed']:,} images, interleaved): portacnn is "
                      f"{fmt(tut['speedup_portacnn_over_tutorial'], 'x')} faster")
            if threads == args.threads[0]:
                if "scaling" in args.sections:
                    report["scaling"] = scaling(backend, args)
                    print("  scaling (training, per image):")
                    for row in report["scaling"]:
                        mem = "n/a" if row["peak_mib"] is None else f"{row['peak_mib']:.1f} MiB"
                        print(f"    batch {row['batch_size']:>4}, {row['image_size']:>3}px: "
                              f"{row['us_per_image']['median']:8.1f} us/image, peak {mem}")
                if "memory" in args.sections:
                    report["memory_mib_after_epochs"] = memory_over_epochs(backend, args)
                    mib = report["memory_mib_after_epochs"]
                    if mib is not None:
                        print(f"  traced memory after epochs 1-{len(mib)}: "
                              + ", ".join(f"{m:.3f}" for m in mib) + " MiB")
            report["by_threads"].append(entry)
            print()
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
