#!/usr/bin/env python
"""Benchmark portacnn's LeNet-5 on any backend, optionally against PyTorch in the same run.

    python scripts/bench.py --device cpu --compare-torch --compare-tutorial --json bench.json
    python scripts/bench.py --device gpu --compare-torch   # CuPy and PyTorch on one GPU
    python scripts/bench.py --quick                 # 6,000 images, fewer repeats
    python scripts/bench.py --data-parallel 2 --compare-torch   # runs mpiexec -n 2 itself
    python scripts/bench.py --sections none --sweep --networks --write-docs   # shapes, networks
    python scripts/bench.py --device jax --compile --json docs/bench/compiled-....json

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

``--sweep`` times one convolution per shape of a curated list (channels 1-256, images 7-64,
kernels 1/3/5/7, strides 1-2, groups, batch 1-128; :mod:`benchmarks.sweep`) and ``--networks``
LeNet-5, the small VGG and ResNet-20, training step and inference, at 1 thread and at every core
(:mod:`benchmarks.networks`), both against PyTorch (``--compare-torch`` is implied), on the
CPU; the networks' rows also give the GFLOP/s each side reaches (FLOPs counted from the model:
:mod:`benchmarks.flops`) and its fraction of the machine's single-thread SGEMM peak, measured
in the same run (:mod:`benchmarks.sgemm`). ``--write-docs`` writes the results into docs/bench/<machine kind>.json and their tables
into docs/performance.md. The code of each section is in ``scripts/benchmarks/``; this file
parses the options and runs the sections asked for.

``--compile`` (with ``--device jax``) runs only the compiled-step section
(:mod:`benchmarks.compiled`): a training step of LeNet-5 and the small VGG compiled by
``jax.jit`` against the same step eager on JAX, on NumPy and in PyTorch, at 1 thread.

The machine's speed drifts, so read ratios between peers measured in the same run, not the
absolute seconds.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time  # noqa: F401  (tests patch bench.time.perf_counter)
from pathlib import Path

# the checkout's portacnn without an install; scripts/ for benchmarks and tutorial_lenet (also
# under python -I)
sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

import portacnn  # noqa: E402
from portacnn import distributed  # noqa: E402
from portacnn.allocator import keep_freed_memory  # noqa: E402

from benchmarks import report as docs_report  # noqa: E402
from benchmarks import compiled as compiled_steps  # noqa: E402
from benchmarks.common import (LR, MOMENTUM, Peer, device_line, load_average,  # noqa: E402,F401
                               machine_info, machine_kind, peak_bytes, timed)
from benchmarks.data_parallel import (_run_timed, data_parallel,  # noqa: E402,F401
                                      print_data_parallel, relaunch_under_mpiexec)
from benchmarks.lenet import MEMORY_EPOCHS  # noqa: E402,F401
from benchmarks.lenet_run import run_lenet  # noqa: E402
from benchmarks.networks import bench_networks, rss_child_main  # noqa: E402
from benchmarks.sgemm import QUICK_SIZES, SIZES, square_peak  # noqa: E402
from benchmarks.sweep import QUICK_SHAPES, SHAPES, sweep  # noqa: E402

_peak_bytes = peak_bytes            # the name the tests use
ROOT = Path(__file__).resolve().parents[1]


# --- options --------------------------------------------------------------------------------

def _ints(text):
    return [int(v) for v in text.split(",")]


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
    p.add_argument("--infer-batches", type=_ints, default=[64, 256, 1024])
    p.add_argument("--scale-batches", type=_ints, default=[16, 32, 64, 128, 256, 512])
    p.add_argument("--compare-torch", action="store_true",
                   help="also time LeNet-5 written in torch.nn, interleaved")
    p.add_argument("--compare-tutorial", action="store_true",
                   help="also time the tutorial-style NumPy implementation (CPU)")
    p.add_argument("--tutorial-images", type=int, default=3200)
    p.add_argument("--sections", default="layers,train,infer,scaling,memory",
                   help="LeNet-5 sections to run ('none' for none)")
    p.add_argument("--quick", action="store_true",
                   help="6,000 images and 2 repeats; toy sweep shapes and network batches")
    p.add_argument("--data-parallel", type=int, default=None, metavar="N",
                   help="only the data-parallel section, under mpiexec -n N (launched here): "
                        "1 process against N processes (and PyTorch with --compare-torch)")
    p.add_argument("--dp-batches", type=_ints, default=[64, 256],
                   help="global batch sizes of the data-parallel section")
    g = p.add_argument_group("shapes and networks (CPU, against PyTorch)")
    g.add_argument("--sweep", action="store_true",
                   help="the convolution sweep at 1 thread: forward, weight and input gradient")
    g.add_argument("--networks", action="store_true",
                   help="LeNet-5, small VGG, ResNet-20: training step and inference")
    g.add_argument("--network-threads", type=_ints, default=None,
                   help="thread counts of --networks (default: 1 and every core)")
    g.add_argument("--network-batch", type=int, default=64, help="training batch")
    g.add_argument("--network-infer-batch", type=int, default=256, help="inference batch")
    g.add_argument("--network-steps", type=int, default=3, help="training steps a timing")
    g.add_argument("--only", type=lambda s: s.split(","), default=None,
                   help="networks to run, e.g. lenet5,small_vgg")
    g.add_argument("--rss", action=argparse.BooleanOptionalAction, default=None,
                   help="peak RSS growth of each network row in a child process (default: on "
                        "unless --quick)")
    g.add_argument("--write-docs", action="store_true",
                   help="write docs/bench/<machine kind>.json and the tables into "
                        "docs/performance.md")
    p.add_argument("--compile", action="store_true",
                   help="only the compiled-step section (--device jax): LeNet-5's and the small "
                        "VGG's training step compiled by jax.jit against eager JAX, NumPy and "
                        "PyTorch, at 1 thread (uses --network-batch, --network-steps, --only)")
    p.add_argument("--rss-child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    args = p.parse_args(argv)
    if args.quick:
        args.images, args.repeats = min(args.images, 6000), min(args.repeats, 2)
        args.network_batch, args.network_infer_batch = 8, 16
        args.network_steps = 1
    if args.rss is None:
        args.rss = not args.quick
    if args.sweep or args.networks or args.rss_child or args.compile:
        args.compare_torch = True
    if args.compile:
        args.sections = "none"
    args.network_threads = args.network_threads or sorted({1, os.cpu_count() or 1})
    args.threads = _ints(args.threads)
    args.sections = set(args.sections.split(",")) - {"none"}
    return args


def portable_kernels(kernels):
    """A kernel set with the portable functions but ``kernels``' work sizes (chunks, fused
    updates): what ``--portable`` runs, so that the figure isolates the overrides."""
    class PortableFunctions(portacnn.kernels.Kernels):
        train_chunk = kernels.train_chunk
        infer_chunk = kernels.infer_chunk
        fuse_updates = kernels.fuse_updates

    return PortableFunctions()


# --- main -----------------------------------------------------------------------------------

def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.data_parallel is not None and not distributed.launched_by_mpi():
        return relaunch_under_mpiexec(__file__, args.data_parallel, argv)
    torch = None
    if args.compare_torch:
        try:
            import torch
        except ImportError:
            flag = "--sweep / --networks" if args.sweep or args.networks else "--compare-torch"
            print(f"{flag} needs PyTorch: pip install torch (a CPU build is enough)",
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
    if args.rss_child is not None:
        return rss_child_main(args.rss_child, backend, torch)
    if args.portable:
        backend.kernels = portable_kernels(backend.kernels)   # this instance only
    peer = Peer(torch, backend) if torch is not None else None
    if peer is not None and peer.device.type == "cuda" and not torch.cuda.is_available():
        print(f"bench: error: --compare-torch on {args.device} needs a CUDA build of PyTorch "
              f"(this torch {torch.__version__} has no CUDA); drop --compare-torch or install "
              "one", file=sys.stderr)
        return 2
    if backend.accelerator and (args.sweep or args.networks):
        print("bench: error: --sweep and --networks compare against PyTorch on the CPU; run "
              "them with --device cpu", file=sys.stderr)
        return 2
    if args.compile and backend.jit is None:
        print(f"bench: error: --compile times steps compiled by jax.jit; run it with --device "
              f"jax, not {args.device}", file=sys.stderr)
        return 2
    if backend.accelerator and len(args.threads) > 1:
        args.threads = args.threads[:1]        # CPU threads do not change a GPU's speed
    allocator_kept = keep_freed_memory()       # as the training command does
    report = {"machine": {**machine_info(backend), "kernels": type(backend.kernels).__name__,
                          "keep_freed_memory": allocator_kept},
              "args": {k: (sorted(v) if isinstance(v, set) else v if not isinstance(v, Path)
                           else str(v)) for k, v in vars(args).items() if k != "json"},
              "by_threads": []}
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
        return _write_json(report, args)
    report.update(machine_kind=machine_kind(report["machine"]), command=" ".join(argv),
                  date=datetime.date.today().isoformat(), load_average_start=load_average())
    if args.sections or args.compare_tutorial:
        print(f"LeNet-5, {args.dtype}, batch {args.batch_size}, {args.images:,} images, "
              f"SGD lr {LR} momentum {MOMENTUM}, median [min-max] of {args.repeats} runs\n")
        run_lenet(backend, args, peer, report)
    if args.sweep:
        print("convolution sweep, 1 thread, portacnn / PyTorch time (forward, weight "
              "gradient, input gradient) and GFLOP/s (portacnn/PyTorch):")
        torch.set_num_threads(1)
        with backend.limit_threads(1):
            report["sweep"] = sweep(backend, torch, QUICK_SHAPES if args.quick else SHAPES,
                                    args.repeats, 0.001 if args.quick else 0.005)
    if args.networks:
        report["sgemm"] = square_peak(QUICK_SIZES if args.quick else SIZES, args.repeats)
        print("single-thread SGEMM (float32 square products, best of "
              f"{args.repeats}): " + ", ".join(f"{s}: {g:.1f}" for s, g in
                                               report["sgemm"]["by_size"].items())
              + " GFLOP/s")
        print(f"networks, portacnn / PyTorch ms at threads {args.network_threads} "
              f"(interleaved):")
        report["networks_threads"] = args.network_threads
        report["networks"] = bench_networks(
            backend, torch, args.network_threads, args.repeats, args.network_batch,
            args.network_infer_batch, args.network_steps, rss=args.rss,
            script=Path(__file__).resolve(), only=args.only,
            peak_gflops=report["sgemm"]["peak_gflops"])
    if args.compile:
        print(f"training step compiled by jax.jit against eager JAX, NumPy and PyTorch, "
              f"1 thread, batch {args.network_batch}, median of {args.repeats} runs of "
              f"{args.network_steps} steps (interleaved):")
        report["compiled"] = compiled_steps.bench_compiled(
            backend, torch, args.repeats, args.network_batch, args.network_steps, args.only)
    report["load_average_end"] = load_average()
    if args.compile:
        print()
        print(compiled_steps.markdown(report["compiled"]))
    if args.sweep or args.networks:
        print()
        print(docs_report.markdown(report))
    if args.write_docs:
        for path in docs_report.write_docs(report, ROOT):
            print(f"wrote {path}")
    return _write_json(report, args)


def _write_json(report, args):
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
