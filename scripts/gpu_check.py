#!/usr/bin/env python
"""Verify a CUDA machine in one command, and write one report (Markdown and JSON).

    python scripts/gpu_check.py                  # the whole check on cuda:0
    python scripts/gpu_check.py --device cuda:1 --out gpu-report/
    python scripts/gpu_check.py --libraries      # do CuPy's NVRTC and cuBLAS load? (no GPU needed)

It installs nothing. The steps, each recorded with its figures:

1. ``smoke``: ``get_backend(device)``: an elementwise op, a reduction, a matrix product; the
   GPU's name, memory, driver, CUDA runtime, NVRTC and CuPy versions; the libraries CuPy loads.
2. ``tests``: the suite's CuPy tests on the device asked for (``PORTACNN_TEST_BACKENDS=cupy
   pytest -k cupy`` with ``CUDA_VISIBLE_DEVICES`` naming that GPU): failed when none passed or
   any skipped, except for an optional library that is not installed (torch, pooch, ...).
3. ``train``: LeNet-5 on the bundled digits for ``--epochs`` epochs (SGD lr 0.02, momentum 0.9,
   batch 32, seed 0) on the GPU and on the CPU: seconds per epoch (the first includes CuPy's
   kernel compilation) and test accuracy, which should agree within 2 points.
4. ``checkpoint``: the GPU model saved, loaded on the CPU, and both models' predictions
   compared (largest probability difference, argmax agreement).
5. ``bench``: ``scripts/bench.py --quick`` on the device (with ``--compare-torch`` when
   PyTorch sees CUDA).

Each step is isolated and time-bounded (``BUDGETS``: a child process is killed at its limit,
an in-process step is interrupted by an alarm): an exception or a timeout is recorded as that
step's failure with its error, the next steps run, and the report is written whatever fails.

Exit status: 0 when every step passed; 1 when one failed (the report says which and what to
do); 2, with one line and no report, on a machine without a GPU.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import portacnn  # noqa: E402
from portacnn.backends import DeviceError, NoDeviceError  # noqa: E402
from portacnn.backends.cupy_doctor import check_libraries  # noqa: E402
from portacnn.data import load_sample, normalize  # noqa: E402
from portacnn.models import lenet5  # noqa: E402
from portacnn.optim import SGD  # noqa: E402

sys.path.insert(0, str(ROOT / "scripts"))
from check_steps import (child_gpu, count_backend_tests, cuda_index, run_child,  # noqa: E402
                         run_step)

STEPS = ("smoke", "tests", "train", "checkpoint", "bench")
BUDGETS = {"smoke": 120, "tests": 900, "train": 600, "checkpoint": 300, "bench": 900}  # s,
# a step's limit: a child process is killed at it, an in-process step interrupted by an alarm
ACCURACY_GAP = 0.02         # GPU and CPU test accuracy after the same seeded run
PROBABILITY_GAP = 1e-4      # float32 predictions of one model on two devices


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


# --- the steps ----------------------------------------------------------------------------------

def step_smoke(device):
    """The backend (or None) and the step's record."""
    t0 = time.perf_counter()
    backend = portacnn.get_backend(device)          # DeviceError is handled by the caller
    record = {"ok": True, "seconds": time.perf_counter() - t0, "backend": backend.description,
              "device": backend.device_info()}
    if backend.accelerator:
        record["libraries"] = check_libraries()
    return backend, record


def step_tests(test_backend: str, device: str = "cpu"):
    """The suite's ``test_backend`` tests (``-k``) in a child process, on ``device`` for CuPy
    (the child's ``CUDA_VISIBLE_DEVICES`` names that GPU alone): failed when none passed, any
    failed, or any skipped for a reason other than an optional library not installed."""
    if importlib.util.find_spec("pytest") is None:
        return None, {"ok": False, "error": "pytest is not installed: pip install pytest (or "
                      "'portacnn[test]') to run the tests step, or leave it out with --steps"}
    env = {**os.environ, "PORTACNN_TEST_BACKENDS": test_backend}
    if test_backend == "cupy":
        env["CUDA_VISIBLE_DEVICES"] = child_gpu(cuda_index(device))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "tests.xml"
        code, stdout, stderr = run_child(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", test_backend,
             f"--junitxml={junit}", str(ROOT / "tests")],
            BUDGETS["tests"], cwd=ROOT, env=env)
        counts, reasons = (count_backend_tests(junit.read_text(), test_backend)
                           if junit.exists() else ({}, []))
    lines = stdout.strip().splitlines()
    summary = lines[-1] if lines else stderr.strip()[-300:]
    failed = [line for line in lines if line.startswith(("FAILED", "ERROR"))][:20]
    problems = []
    if code != 0:
        problems.append(f"pytest exited with status {code}")
    if not counts.get("passed"):
        problems.append(f"no {test_backend} test passed")
    if counts.get("skipped"):
        problems.append(f"{counts['skipped']} {test_backend} tests skipped: "
                        + "; ".join(reasons)[:500])
    record = {"ok": not problems, "seconds": time.perf_counter() - t0, "backends": test_backend,
              "summary": summary, "counts": counts, "skip_reasons": reasons,
              "failures": failed}
    if test_backend == "cupy":
        record["cuda_visible_devices"] = env["CUDA_VISIBLE_DEVICES"]
    if problems:
        record["error"] = "; ".join(problems)
    return None, record


def _digits():
    (x, y), (xt, yt) = load_sample()
    return normalize(x), y, normalize(xt), yt


def _train(device, epochs, data):
    x, y, xt, yt = data
    model = lenet5(device=device, seed=0)
    history = model.fit(x, y, epochs=epochs, batch_size=32, optimizer=SGD(0.02, momentum=0.9),
                        validation_data=(xt, yt), verbose=0, seed=0)
    return model, {"epoch_seconds": history["seconds"], "loss": history["loss"],
                   "test_accuracy": history["val_accuracy"][-1]}


def step_train(backend, epochs: int):
    """The model trained on the device, and the record comparing it with the CPU's run."""
    data = _digits()
    model, ours = _train(backend, epochs, data)
    _, cpu = _train("cpu", epochs, data)
    gap = abs(ours["test_accuracy"] - cpu["test_accuracy"])
    seconds = ours["epoch_seconds"]
    record = {"ok": gap <= ACCURACY_GAP, "device": ours, "cpu": cpu, "accuracy_gap": gap,
              "images": int(data[0].shape[0]), "epochs": epochs}
    if len(seconds) > 1:
        later = sum(seconds[1:]) / len(seconds[1:])
        record["first_epoch_extra_seconds"] = seconds[0] - later   # kernel compilation
    return model, record


def step_checkpoint(model):
    """Save on the device, load on the CPU, compare the two models' predictions."""
    _, _, xt, _ = _digits()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        path = model.save(Path(tmp) / "gpu_check.safetensors")
        on_cpu = portacnn.load(path, device="cpu")
        seconds = time.perf_counter() - t0
    ours = model.backend.to_numpy(model.predict(xt))
    theirs = on_cpu.backend.to_numpy(on_cpu.predict(xt))
    gap = float(np.max(np.abs(ours - theirs)))
    agree = float(np.mean(ours.argmax(axis=1) == theirs.argmax(axis=1)))
    return None, {"ok": gap <= PROBABILITY_GAP and agree == 1.0, "seconds": seconds,
                  "max_probability_gap": gap, "argmax_agreement": agree,
                  "loaded_on": on_cpu.backend.description}


def step_bench(device: str):
    """scripts/bench.py --quick on the device, in a child process; its JSON report."""
    args = [sys.executable, str(ROOT / "scripts" / "bench.py"), "--device", device, "--quick",
            "--sections", "layers,train,infer,scaling"]
    try:
        import torch

        if torch.cuda.is_available() or device == "cpu":
            args.append("--compare-torch")
    except ImportError:
        pass
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.json"
        t0 = time.perf_counter()
        code, stdout, stderr = run_child(args + ["--json", str(out)], BUDGETS["bench"], cwd=ROOT)
        report = json.loads(out.read_text()) if out.exists() else None
    record = {"ok": code == 0 and report is not None, "seconds": time.perf_counter() - t0,
              "command": " ".join(args[1:]), "output": stdout[-4000:], "report": report}
    if not record["ok"]:
        record["error"] = (f"bench exited with status {code}: "
                           + (stderr.strip()[-2000:] or "no output"))
    return None, record


# --- the report -----------------------------------------------------------------------------

def _status(record):
    return "passed" if record.get("ok") else "FAILED"


def markdown(report) -> str:
    """The report as Markdown: a summary table, then each step's figures."""
    steps = report["steps"]
    out = [f"# portacnn GPU check: {report['device']}", "",
           f"{report['when']}, portacnn {report['portacnn']}, Python {report['python']}", "",
           "| step | status | figures |", "|---|---|---|"]
    for name, record in steps.items():
        out.append(f"| {name} | {_status(record)} | {_figures(name, record)} |")
    smoke = steps.get("smoke", {})
    if smoke.get("device"):
        out += ["", "## Device", ""] + [f"- {k}: {v}" for k, v in smoke["device"].items()]
    for row in smoke.get("libraries", []):
        mark = {True: "loads", False: "MISSING", None: "info"}[row["ok"]]
        out.append(f"- {row['library']}: {mark}, {row['detail']}")
    if "error" in smoke:
        out += ["", "## Smoke test failed", "", smoke["error"]]
    tests = steps.get("tests")
    if tests and tests.get("failures"):
        out += ["", "## Test failures", ""] + [f"- {line}" for line in tests["failures"]]
    bench = steps.get("bench")
    if bench and bench.get("output"):
        out += ["", "## Benchmark (--quick)", "", "```", bench["output"].strip(), "```"]
    return "\n".join(out) + "\n"


def _figures(name, r) -> str:
    if "error" in r:
        return r["error"].splitlines()[0][:200]
    if name == "smoke":
        d = r.get("device", {})
        return f"{d.get('gpu', r['backend'])}, {r['seconds']:.2f} s"
    if name == "tests":
        return f"{r['summary']} (PORTACNN_TEST_BACKENDS={r['backends']})"
    if name == "train":
        dev, cpu = r["device"], r["cpu"]
        epochs = ", ".join(f"{s:.2f}" for s in dev["epoch_seconds"])
        return (f"test accuracy {dev['test_accuracy']:.4f} vs CPU {cpu['test_accuracy']:.4f} "
                f"(gap {r['accuracy_gap']:.4f}); epochs {epochs} s (CPU "
                f"{', '.join(f'{s:.2f}' for s in cpu['epoch_seconds'])} s)")
    if name == "checkpoint":
        return (f"largest probability gap {r['max_probability_gap']:.2e}, argmax agreement "
                f"{r['argmax_agreement']:.4f}, loaded on {r['loaded_on']}")
    if name == "bench":
        train = ((r.get("report") or {}).get("by_threads") or [{}])[0].get("train", {})
        ratio = train.get("ratio_portacnn_over_torch", {}).get("median")
        epoch = train.get("portacnn", {}).get("median")
        return (f"epoch {epoch:.2f} s" if epoch else "no epoch time") + (
            f", portacnn/PyTorch {ratio:.2f}x" if ratio else "")
    return ""


# --- main -------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="gpu", help="gpu (cuda:0), cuda:N; cpu runs the same "
                   "steps on NumPy, to try the script")
    p.add_argument("--libraries", action="store_true",
                   help="only check that CuPy's CUDA runtime, NVRTC and cuBLAS load (no GPU)")
    p.add_argument("--steps", default=",".join(STEPS), help=f"a subset of {','.join(STEPS)}")
    p.add_argument("--epochs", type=int, default=3)
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


def run_steps(args, backend, steps):
    """The steps after the smoke test, each isolated: one failing does not stop the next."""
    model = None
    if "tests" in args.steps:
        test_backend = "cupy" if backend.accelerator else backend.name
        steps["tests"] = run_step("tests", BUDGETS["tests"] + 30, step_tests, test_backend,
                                  args.device)[1]     # + 30 s: the child's own limit first
    if "train" in args.steps:
        model, steps["train"] = run_step("train", BUDGETS["train"], step_train, backend,
                                         args.epochs)
    if "checkpoint" in args.steps:
        def checkpoint():
            return step_checkpoint(model or step_train(backend, 1)[0])
        steps["checkpoint"] = run_step("checkpoint", BUDGETS["checkpoint"], checkpoint)[1]
    if "bench" in args.steps:
        steps["bench"] = run_step("bench", BUDGETS["bench"] + 30, step_bench, args.device)[1]


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.libraries:
        return libraries_only()
    wants_gpu = args.device not in ("cpu", "numpy")
    if wants_gpu and not cupy_installed() and not gpu_present():
        print("gpu_check: no NVIDIA GPU on this machine (no /proc/driver/nvidia/gpus, CuPy not "
              "installed): nothing to check")
        return 2
    report = {"device": args.device, "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
              "portacnn": portacnn.__version__, "python": sys.version.split()[0], "steps": {}}
    steps = report["steps"]
    try:
        backend, steps["smoke"] = run_step("smoke", BUDGETS["smoke"], step_smoke,
                                           args.device, passthrough=(NoDeviceError, DeviceError))
    except NoDeviceError as exc:
        print(f"gpu_check: no GPU on this machine: {exc}")
        return 2
    except DeviceError as exc:
        steps["smoke"] = {"ok": False, "error": str(exc)}
        libraries, _ = run_step("smoke", BUDGETS["smoke"],
                                lambda: (check_libraries(), {}))
        steps["smoke"]["libraries"] = libraries or []
        backend = None
    try:
        if backend is not None:
            run_steps(args, backend, steps)
    finally:                            # the report whatever fails, even an interrupt
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
        (args.out / "gpu_check.md").write_text(markdown(report))
    for name, record in steps.items():
        print(f"{name:<11} {_status(record):<7} {_figures(name, record)}")
    print(f"report: {args.out / 'gpu_check.md'} and {args.out / 'gpu_check.json'}")
    return 0 if all(record.get("ok") for record in steps.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
