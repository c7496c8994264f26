"""The data-parallel section (``--data-parallel N``): one process against N MPI processes of
one thread each, the time of one gradient sum, and what a simple model predicts for more
processes and for two nodes."""

from __future__ import annotations

import gc
import math
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from portacnn.models import lenet5
from portacnn.optim import SGD

from .common import LR, MOMENTUM, dataset, fmt, summarize
from .lenet import torch_epoch, torch_lenet

# Links assumed for the two-node predictions: (bytes/s, latency in s) of typical MPI transports.
NETWORKS = {"10 Gb/s Ethernet": (1.25e9, 50e-6), "100 Gb/s InfiniBand": (12.5e9, 2e-6)}
REDUCTION_CALLS = 200


def relaunch_under_mpiexec(script, processes, argv):
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
               str(Path(script).resolve()), *argv]
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
    print("  model (from the fastest runs): step = c*rows/k + o + (k-1)*(latency + "
          f"bytes/bandwidth); measured here: latency {model['latency_s'] * 1e6:.0f} us, bandwidth "
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

