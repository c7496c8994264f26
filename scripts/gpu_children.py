"""The steps of scripts/gpu_check.py that read the machine or run in child processes: the
environment (``nvidia-smi``), the suite's CuPy tests, the command line, two MPI ranks and the
benchmark. Each returns ``(None, record)`` for :func:`check_steps.run_step`; a child process
is killed with its own children at the step's ``timeout``.

    python scripts/gpu_children.py mpi-rank DEVICE OUT.json   # one rank of the mpi step
"""

from __future__ import annotations

import csv
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:           # the checkout's portacnn, installed or not
    sys.path.insert(0, str(ROOT))

from check_steps import child_gpu, count_backend_tests, cuda_index, run_child  # noqa: E402
from gpu_steps import LR, MOMENTUM, digits, skipped, speed  # noqa: E402

# --- the environment ----------------------------------------------------------------------------

QUERY = ("index", "name", "driver_version", "memory.total", "memory.used", "mig.mode.current",
         "compute_mode", "ecc.mode.current")
BASIC_QUERY = QUERY[:4]                 # every driver knows these
PACKAGES = ("numpy", "array-api-compat", "array-api-extra", "cupy-cuda12x", "cupy-cuda13x",
            "cupy", "torch", "mpi4py", "safetensors", "pytest")


def _value(text: str):
    text = text.strip()
    if not text or text.strip("[]") in ("N/A", "Not Supported", "Unknown Error"):
        return None
    return int(text) if text.isdigit() else text


def parse_gpus(text: str, fields=QUERY) -> list[dict]:
    """Rows of ``nvidia-smi --query-gpu=FIELDS --format=csv,noheader,nounits``: one dict a
    GPU; ``[N/A]`` and ``[Not Supported]`` become None; a row with too few or too many columns
    keeps what it can and the line as ``raw``."""
    rows = []
    for line in filter(str.strip, text.splitlines()):
        cells = next(csv.reader([line], skipinitialspace=True))
        row = {field: _value(cell) for field, cell in zip(fields, cells)}
        if len(cells) != len(fields):
            row["raw"] = line
        rows.append(row)
    return rows


def nvidia_smi(timeout: float = 20) -> dict:
    """What ``nvidia-smi`` says of each GPU (:data:`QUERY`) and the driver's CUDA version; the
    reason where it is absent or fails. A driver that refuses a field is asked the basic ones."""
    tool = shutil.which("nvidia-smi")
    if tool is None:
        return {"error": "nvidia-smi is not on the PATH (no NVIDIA driver installed, or a "
                "container without the driver's tools)"}
    out = {"path": tool}
    for fields in (QUERY, BASIC_QUERY):
        code, stdout, stderr = run_child([tool, f"--query-gpu={','.join(fields)}",
                                          "--format=csv,noheader,nounits"], timeout)
        if code == 0:
            out["gpus"] = parse_gpus(stdout, fields)
            break
        out["error"] = f"nvidia-smi exited with status {code}: {(stderr or stdout).strip()[:300]}"
    else:
        return out
    out.pop("error", None)
    code, stdout, _ = run_child([tool], timeout)
    match = re.search(r"CUDA Version:\s*([\d.]+)", stdout)
    out["cuda_version"] = match.group(1) if match else None
    return out


def notes(gpus: list[dict]) -> list[str]:
    """What in ``nvidia-smi``'s facts changes how portacnn can use a GPU."""
    out = []
    for gpu in gpus:
        name = f"GPU {gpu.get('index')}"
        if str(gpu.get("mig.mode.current")).lower() == "enabled":
            out.append(f"{name}: MIG is on: CUDA sees its MIG instances, not the GPU; name one "
                       "with CUDA_VISIBLE_DEVICES=MIG-<uuid> (nvidia-smi -L)")
        if "exclusive" in str(gpu.get("compute_mode")).lower():
            out.append(f"{name}: compute mode {gpu['compute_mode']}: one process at a time, so "
                       "two MPI ranks cannot share it")
    return out


def step_env():
    """Python, the platform, the relevant packages' versions, ``CUDA_VISIBLE_DEVICES``,
    ``mpiexec`` and ``nvidia-smi``'s facts (driver, CUDA, names, memory, MIG, compute mode,
    ECC). Facts only: an absent ``nvidia-smi`` is recorded, not a failure."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    smi = nvidia_smi()
    return None, {"ok": True, "python": sys.version.split()[0], "platform": platform.platform(),
                  "packages": versions, "mpiexec": shutil.which("mpiexec"),
                  "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                  "nvidia_smi": smi, "notes": notes(smi.get("gpus", []))}


# --- the suite's CuPy tests -------------------------------------------------------------------

def step_tests(test_backend: str, device: str = "cpu", timeout: float = 300):
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
             f"--junitxml={junit}", str(ROOT / "tests")], timeout, cwd=ROOT, env=env)
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


# --- the command line, one epoch ----------------------------------------------------------------

def _child_env(**extra) -> dict:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}


def step_cli(device: str, library: str, timeout: float = 120):
    """``PORTACNN_DEVICE=device python -m portacnn train --epochs 1 --save ...`` on the
    bundled sample: status 0, the backend of ``library`` named on its device line, the model
    saved, test accuracy of at least 0.8."""
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        saved = Path(tmp) / "cli.safetensors"
        args = [sys.executable, "-m", "portacnn", "train", "--epochs", "1", "--save", str(saved)]
        code, stdout, stderr = run_child(args, timeout, cwd=tmp,
                                         env=_child_env(PORTACNN_DEVICE=device))
        wrote = saved.exists()
    line = next((s for s in stdout.splitlines() if s.startswith("device:")), "")
    match = re.search(r"test accuracy ([\d.]+)", stdout)
    accuracy = float(match.group(1)) if match else None
    problems = []
    if code != 0:
        last = (stderr.strip() or stdout.strip() or "no output").splitlines()[-1]
        problems.append(f"exited with status {code}: {last}")
    elif library not in line:
        problems.append(f"trained on {line or 'an unnamed device'}, not {library}")
    elif not wrote:
        problems.append("--save wrote no file")
    elif accuracy is None or accuracy < 0.8:
        problems.append(f"test accuracy {accuracy} after one epoch (0.8 or more expected)")
    record = {"ok": not problems, "seconds": time.perf_counter() - t0,
              "command": f"PORTACNN_DEVICE={device} " + " ".join(args[1:-2]),
              "device_line": line, "test_accuracy": accuracy, "output": stdout[-2000:]}
    if problems:
        record["error"] = "; ".join(problems)
    return None, record


# --- two MPI ranks ------------------------------------------------------------------------------

def mpi_rank(device: str, out: Path) -> None:
    """One rank of the mpi step: its device (``rank_device``), one data-parallel epoch on 256
    digits, then rank 0 writes each rank's device and the largest parameter difference."""
    import numpy as np

    from portacnn import distributed
    from portacnn.backends import to_numpy
    from portacnn.models import lenet5
    from portacnn.optim import SGD

    comm = distributed.world()
    local = distributed.local_rank(comm)
    backend = distributed.rank_device(device, comm)
    x, y, _, _ = digits(256)
    model = lenet5(device=backend, seed=0)
    history = distributed.DataParallel(model).fit(
        x, y, epochs=1, batch_size=64, optimizer=SGD(LR, momentum=MOMENTUM), verbose=0)
    flat = np.concatenate([to_numpy(p.value).ravel() for p in model.parameters()])
    me = {"rank": comm.rank, "local_rank": local, "device": str(backend.device),
          "device_id": getattr(backend.device, "id", None), "loss": history["loss"][-1]}
    everyone, flats = comm.allgather(me), comm.gather(flat)
    if comm.rank == 0:
        worst = max(float(np.max(np.abs(f - flats[0]))) for f in flats)
        out.write_text(json.dumps({"ranks": everyone, "max_parameter_difference": worst}))


def step_mpi(backend, timeout: float = 120):
    """``mpiexec -n 2`` of :func:`mpi_rank`: two ranks sharing the GPU (one GPU) or splitting
    them (rank r on ``local rank % GPUs``; ``backend``'s library counts them), their replicas
    equal bit for bit after an epoch. Skipped, with the reason, without ``mpiexec`` or
    mpi4py."""
    mpiexec = shutil.which("mpiexec")
    if mpiexec is None:
        return None, skipped('mpiexec is not on the PATH (pip install "portacnn[mpi]" brings '
                             "mpi4py and Open MPI)")
    if importlib.util.find_spec("mpi4py") is None:
        return None, skipped('mpi4py is not installed (pip install "portacnn[mpi]")')
    gpus = backend.native.cuda.runtime.getDeviceCount() if backend.accelerator else 0
    rank_device = "gpu" if gpus else "cpu"
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "mpi.json"
        args = [mpiexec, "-n", "2", sys.executable, str(Path(__file__).resolve()), "mpi-rank",
                rank_device, str(out)]
        code, stdout, stderr = run_child(args, timeout, cwd=tmp, env=_child_env(
            OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1"))
        result = json.loads(out.read_text()) if out.exists() else None
    record = {"ok": False, "seconds": time.perf_counter() - t0, "command": " ".join(args[1:5]),
              "layout": ("CPU" if not gpus else "sharing the GPU" if gpus == 1
                         else f"splitting {gpus} GPUs")}
    if code != 0 or result is None:
        tail = (stderr.strip() or stdout.strip() or "no output")[-1500:]
        record["error"] = f"mpiexec -n 2 exited with status {code}: {tail}"
        return None, record
    ranks = sorted(result["ranks"], key=lambda r: r["rank"])
    wrong = [r for r in ranks if gpus and r["device_id"] != r["local_rank"] % gpus]
    record.update(ranks=ranks, max_parameter_difference=result["max_parameter_difference"])
    problems = [f"rank {r['rank']} (local rank {r['local_rank']}) is on {r['device']}, not "
                f"cuda:{r['local_rank'] % gpus}" for r in wrong]
    if result["max_parameter_difference"] != 0:
        problems.append(f"the replicas differ by {result['max_parameter_difference']:.2e}")
    record["ok"] = not problems
    if problems:
        record["error"] = "; ".join(problems)
    return None, record


# --- the benchmark ------------------------------------------------------------------------------

def _torch_sees(device: str) -> str | None:
    """None when PyTorch can run beside portacnn on ``device``, else why not."""
    try:
        import torch
    except ImportError:
        return "PyTorch is not installed"
    if device != "cpu" and not torch.cuda.is_available():
        return f"this PyTorch ({torch.__version__}) has no CUDA"
    return None


def step_bench(device: str, backend, timeout: float = 180):
    """The pass threshold (:func:`gpu_steps.speed`: a step at batch 256 faster on the GPU than
    on the CPU), then ``scripts/bench.py --quick`` (per-layer times, a training epoch) with
    ``--compare-torch`` where PyTorch sees the device: the portacnn/PyTorch ratio, reported."""
    t0 = time.perf_counter()
    record = {"speed": speed(backend) if backend.accelerator else skipped("the device is the CPU")}
    args = [sys.executable, str(ROOT / "scripts" / "bench.py"), "--device", device, "--quick",
            "--sections", "layers,train", "--threads", "1"]
    why_not = _torch_sees(device)
    if why_not is None:
        args.append("--compare-torch")
    else:
        record["torch"] = f"not compared: {why_not}"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.json"
        code, stdout, stderr = run_child(args + ["--json", str(out)], timeout, cwd=ROOT)
        report = json.loads(out.read_text()) if out.exists() else None
    train = ((report or {}).get("by_threads") or [{}])[0].get("train", {})
    ratio = train.get("ratio_portacnn_over_torch", {}).get("median")
    record.update(seconds=time.perf_counter() - t0, command=" ".join(args[1:]),
                  output=stdout[-4000:], report=report, ratio_portacnn_over_torch=ratio)
    problems = [record["speed"]["error"]] if "error" in record["speed"] else []
    if code != 0 or report is None:
        problems.append(f"bench exited with status {code}: "
                        + (stderr.strip()[-2000:] or "no output"))
    record["ok"] = not problems
    if problems:
        record["error"] = "; ".join(problems)
    return None, record


if __name__ == "__main__":
    if sys.argv[1:2] == ["mpi-rank"]:
        mpi_rank(sys.argv[2], Path(sys.argv[3]))
    else:
        sys.exit(__doc__)
