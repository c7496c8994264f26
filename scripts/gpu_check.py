#!/usr/bin/env python
"""Verify a CUDA machine in one command, and write one report (Markdown and JSON).

    python scripts/gpu_check.py                  # the whole check on cuda:0, under 8 minutes
    python scripts/gpu_check.py --device cuda:1 --out gpu-report/
    python scripts/gpu_check.py --libraries      # do CuPy's NVRTC and cuBLAS load? (no GPU needed)

It installs nothing. The steps, in this order, each recorded with its figures (docs/gpu.md):

- ``env``: Python, packages, ``CUDA_VISIBLE_DEVICES``, ``mpiexec``; ``nvidia-smi``'s driver,
  CUDA version, GPU names, memory, MIG mode, compute mode and ECC (facts, never a failure).
- ``smoke``: ``get_backend(device)``: CuPy's smoke test, the GPU's facts, the libraries CuPy
  loads. Without it no later step runs.
- ``parity``: 20 LeNet-5 training steps on the GPU and on the CPU from the same weights and
  batches: parameters equal within 1e-4 of their scale in float32, 1e-10 in float64.
- ``sync``: training steps inside ``cupyx.allow_synchronize(False)``: no hidden host
  synchronisation (a failure names the line).
- ``memory``: 5 epochs on the 4,000 bundled digits: the memory pool's bytes in use flat from
  epoch 2 to 5; epoch seconds (the first includes kernel compilation) and test accuracy.
- ``checkpoint``: saved on the GPU and loaded on the CPU, and the reverse: parameters equal,
  predictions within 1e-4.
- ``devices``: every visible GPU as ``cuda:N``, one training step each.
- ``cli``: ``PORTACNN_DEVICE=<device> python -m portacnn train --epochs 1`` in a child process.
- ``mpi``: ``mpiexec -n 2``: two ranks sharing (or splitting) the GPUs, replicas equal; skipped
  without mpiexec and mpi4py.
- ``bench``: a step at batch 256 faster on the GPU than on the CPU (the pass threshold);
  ``scripts/bench.py --quick`` against PyTorch on the same GPU (the ratio, reported).
- ``tests``: the suite's CuPy tests on the device asked for, with the time left.

Each step is isolated and time-bounded (``BUDGETS``, and all of them within ``TOTAL_SECONDS``:
a step gets at most the time left; a child process is killed at its limit, an in-process step
is interrupted by an alarm): an exception or a timeout is that step's failure with its error,
the next steps run, and the report is written whatever fails.

Exit status: 0 when no step failed (a skipped step is not a failure); 1 when one failed (the
report says which and what to do); 2, with one line and no report, on a machine without a GPU.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import portacnn  # noqa: E402
from portacnn.backends import DeviceError, NoDeviceError  # noqa: E402
from portacnn.backends.cupy_doctor import check_libraries  # noqa: E402

sys.path.insert(0, str(ROOT / "scripts"))
import gpu_children  # noqa: E402
import gpu_steps  # noqa: E402
from check_steps import child_gpu, cuda_index, run_step  # noqa: E402, F401

STEPS = ("env", "smoke", "parity", "sync", "memory", "checkpoint", "devices", "cli", "mpi",
         "bench", "tests")
BUDGETS = {"env": 30, "smoke": 90, "parity": 60, "sync": 30, "memory": 60, "checkpoint": 30,
           "devices": 60, "cli": 90, "mpi": 90, "bench": 150, "tests": 300}     # s, at most
TOTAL_SECONDS = 465         # every step within it: the check ends in under 8 minutes
MIN_SECONDS = 5             # a step with less time left is skipped


# --- no GPU at all ----------------------------------------------------------------------------

def cupy_installed() -> bool:
    try:
        return importlib.util.find_spec("cupy") is not None
    except ValueError:              # imported already, without a spec
        return True


def gpu_present() -> bool:
    """Whether this machine shows an NVIDIA GPU to the kernel (without CuPy)."""
    gpus = Path("/proc/driver/nvidia/gpus")
    return gpus.is_dir() and any(gpus.iterdir())


# --- the report -----------------------------------------------------------------------------

def _status(record):
    if "skipped" in record:
        return "skipped"
    return "passed" if record.get("ok") else "FAILED"


def markdown(report) -> str:
    """The report as Markdown: a summary table, then the facts and failures in detail."""
    steps = report["steps"]
    out = [f"# portacnn GPU check: {report['device']}", "",
           f"{report['when']}, portacnn {report['portacnn']}, Python {report['python']}, "
           f"{report.get('seconds', 0):.0f} s in all", "",
           "| step | status | figures |", "|---|---|---|"]
    for name, record in steps.items():
        out.append(f"| {name} | {_status(record)} | {_figures(name, record)} |")
    env = steps.get("env", {})
    smi = env.get("nvidia_smi", {})
    if env:
        out += ["", "## Machine", "", f"- nvidia-smi: {smi.get('error') or smi.get('path')}"]
        if smi.get("cuda_version"):
            out.append(f"- driver's CUDA version: {smi['cuda_version']}")
        for gpu in smi.get("gpus", []):
            out.append(f"- GPU {gpu.get('index')}: "
                       + ", ".join(f"{k} {v}" for k, v in gpu.items() if k != "index"))
        out += [f"- {k}: {v}" for k, v in env.get("packages", {}).items()]
        out += [f"- note: {note}" for note in env.get("notes", [])]
    smoke = steps.get("smoke", {})
    if smoke.get("device"):
        out += ["", "## Device", ""] + [f"- {k}: {v}" for k, v in smoke["device"].items()]
    for row in smoke.get("libraries", []):
        mark = {True: "loads", False: "MISSING", None: "info"}[row["ok"]]
        out.append(f"- {row['library']}: {mark}, {row['detail']}")
    failed = [(n, r) for n, r in steps.items() if "error" in r]
    if failed:
        out += ["", "## Failures", ""] + [f"- **{n}**: {r['error']}" for n, r in failed]
    tests = steps.get("tests")
    if tests and tests.get("failures"):
        out += ["", "## Test failures", ""] + [f"- {line}" for line in tests["failures"]]
    bench = steps.get("bench")
    if bench and bench.get("output"):
        out += ["", "## Benchmark (--quick)", "", "```", bench["output"].strip(), "```"]
    return "\n".join(out) + "\n"


def _figures(name, r) -> str:
    """The table cell of step ``name``: its error, why it was skipped, or its figures (a
    record without the figures expected says so rather than losing the report)."""
    if "error" in r:
        return r["error"].splitlines()[0][:200]
    if "skipped" in r:
        return r["skipped"]
    try:
        return FIGURES.get(name, lambda r: "")(r)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        return f"(figures missing from the record: {type(exc).__name__}: {exc})"


def _env_figures(r):
    smi = r["nvidia_smi"]
    gpus = ", ".join(f"{g.get('name')} {g.get('memory.total')} MiB, MIG "
                     f"{g.get('mig.mode.current')}, {g.get('compute_mode')}, ECC "
                     f"{g.get('ecc.mode.current')}" for g in smi.get("gpus", []))
    driver = next((g.get("driver_version") for g in smi.get("gpus", [])), None)
    return (smi["error"] if "error" in smi else
            f"driver {driver}, CUDA {smi.get('cuda_version')}: {gpus}")


def _bench_figures(r):
    speed, ratio = r["speed"], r.get("ratio_portacnn_over_torch")
    text = (f"batch 256 step {speed['device_step_seconds'] * 1e3:.1f} ms vs CPU "
            f"{speed['cpu_step_seconds'] * 1e3:.1f} ms" if "skipped" not in speed
            else f"speed: {speed['skipped']}")
    return text + (f"; portacnn/PyTorch epoch {ratio:.2f}x" if ratio else
                   f"; {r.get('torch', 'no PyTorch ratio')}")


def _memory_figures(r):
    used = ", ".join(f"{b / 2**20:.2f}" for b in r["used_bytes_after_epochs"])
    epochs = ", ".join(f"{s:.2f}" for s in r["epoch_seconds"])
    return f"pool used {used} MiB; epochs {epochs} s; test accuracy {r['test_accuracy']:.4f}"


FIGURES = {
    "env": _env_figures,
    "smoke": lambda r: f"{r['device'].get('gpu', r['backend'])}, {r['seconds']:.2f} s",
    "parity": lambda r: ", ".join(
        f"{d} {r[d]['relative_difference']:.1e} (<= {r[d]['tolerance']:g})"
        for d in gpu_steps.PARITY_TOLERANCE) + f" after {r['steps']} steps",
    "sync": lambda r: (f"{r['steps']} steps queued in {r['seconds_queued'] * 1e3:.1f} ms, "
                       "none waited"),
    "memory": _memory_figures,
    "checkpoint": lambda r: ", ".join(
        f"{k.replace('_', ' ')}: parameters equal, gap {r[k]['max_probability_gap']:.1e}"
        for k in ("device_to_cpu", "cpu_to_device")),
    "devices": lambda r: ", ".join(f"{d['device']} {d.get('gpu')} {d['seconds']:.1f} s"
                                   for d in r["devices"]),
    "cli": lambda r: (f"{r['device_line']}; test accuracy {r['test_accuracy']}, "
                      f"{r['seconds']:.0f} s"),
    "mpi": lambda r: (f"{r['layout']}: " + ", ".join(f"rank {x['rank']} on {x['device']}"
                                                     for x in r["ranks"]) + ", replicas equal"),
    "bench": _bench_figures,
    "tests": lambda r: f"{r['summary']} (PORTACNN_TEST_BACKENDS={r['backends']})",
}


# --- main -------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="gpu", help="gpu (cuda:0), cuda:N; cpu runs the steps "
                   "that apply to it on NumPy, to try the script")
    p.add_argument("--libraries", action="store_true",
                   help="only check that CuPy's CUDA runtime, NVRTC and cuBLAS load (no GPU)")
    p.add_argument("--steps", default=",".join(STEPS), help=f"a subset of {','.join(STEPS)}")
    p.add_argument("--images", type=int, default=None,
                   help="digits the memory and checkpoint steps train and test on (default: "
                   "4,000 and 1,000; 256 training for checkpoint)")
    p.add_argument("--out", type=Path, default=Path("gpu-check"),
                   help="folder for gpu_check.md and gpu_check.json")
    args = p.parse_args(argv)
    args.steps = [s for s in args.steps.split(",") if s]
    unknown = set(args.steps) - set(STEPS)
    if unknown:
        p.error(f"unknown steps {sorted(unknown)}; choose from {', '.join(STEPS)}")
    return args


def libraries_only() -> int:
    rows = check_libraries()
    for row in rows:
        mark = {True: "ok     ", False: "MISSING", None: "info   "}[row["ok"]]
        print(f"{mark} {row['library']}: {row['detail']}")
    return 0 if all(row["ok"] is not False for row in rows) else 1


def _plan(args, backend):
    """Each step after the smoke test: ``name -> (function, arguments)``; the child-process
    steps take their time limit as ``timeout`` (filled in when they run)."""
    test_backend = "cupy" if backend.accelerator else backend.name
    return {"parity": (gpu_steps.step_parity, (backend,)),
            "sync": (gpu_steps.step_sync, (backend,)),
            "memory": (gpu_steps.step_memory, (backend, args.images)),
            "checkpoint": (gpu_steps.step_checkpoint, (backend, args.images)),
            "devices": (gpu_steps.step_devices, (backend,)),
            "cli": (gpu_children.step_cli, (args.device, backend.name)),
            "mpi": (gpu_children.step_mpi, (backend,)),
            "bench": (gpu_children.step_bench, (args.device, backend)),
            "tests": (gpu_children.step_tests, (test_backend, args.device))}


CHILD_STEPS = ("cli", "mpi", "bench", "tests")


def run_steps(args, backend, steps, deadline):
    """The steps after the smoke test, each isolated and within the time left: one failing
    does not stop the next."""
    for name, (fn, fn_args) in _plan(args, backend).items():
        if name not in args.steps:
            continue
        child = name in CHILD_STEPS   # the child's own limit first, the alarm 2 s later
        left = deadline - time.perf_counter() - 2 * child
        budget = min(BUDGETS[name], left)
        if left < MIN_SECONDS:
            steps[name] = {"ok": False, "error": f"not run: the check's {TOTAL_SECONDS} s "
                           "were spent (gpu_check.TOTAL_SECONDS)"}
            continue
        if child:
            steps[name] = run_step(name, budget + 2, fn, *fn_args, budget)[1]
        else:
            steps[name] = run_step(name, budget, fn, *fn_args)[1]


def _smoke(args, steps):
    """The backend (None when the smoke test failed); NoDeviceError passes through."""
    try:
        backend, steps["smoke"] = run_step("smoke", BUDGETS["smoke"], gpu_steps.step_smoke,
                                           args.device, passthrough=(NoDeviceError, DeviceError))
    except DeviceError as exc:
        if isinstance(exc, NoDeviceError):
            raise
        steps["smoke"] = {"ok": False, "error": str(exc)}
        libraries, _ = run_step("smoke", BUDGETS["smoke"], lambda: (check_libraries(), {}))
        steps["smoke"]["libraries"] = libraries or []
        backend = None
    return backend


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.libraries:
        return libraries_only()
    wants_gpu = args.device not in ("cpu", "numpy")
    if wants_gpu and not cupy_installed() and not gpu_present():
        print("gpu_check: no NVIDIA GPU on this machine (no /proc/driver/nvidia/gpus, CuPy not "
              "installed): nothing to check")
        return 2
    t0 = time.perf_counter()
    deadline = t0 + TOTAL_SECONDS
    report = {"device": args.device, "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
              "portacnn": portacnn.__version__, "python": sys.version.split()[0], "steps": {}}
    steps = report["steps"]
    try:
        if "env" in args.steps:
            steps["env"] = run_step("env", BUDGETS["env"], gpu_children.step_env)[1]
        try:
            backend = _smoke(args, steps)
        except NoDeviceError as exc:
            print(f"gpu_check: no GPU on this machine: {exc}")
            return 2
        if backend is not None:
            run_steps(args, backend, steps, deadline)
    finally:                            # the report whatever fails, even an interrupt
        if "smoke" in steps:
            report["seconds"] = time.perf_counter() - t0
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
            (args.out / "gpu_check.md").write_text(markdown(report))
    for name, record in steps.items():
        print(f"{name:<11} {_status(record):<7} {_figures(name, record)}")
    print(f"report: {args.out / 'gpu_check.md'} and {args.out / 'gpu_check.json'}")
    return 0 if all(record.get("ok") for record in steps.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
