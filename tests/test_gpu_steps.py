"""The steps of scripts/gpu_check.py on a simulated CuPy (NumPy underneath: tests/fake_cupy.py's
``simulated_gpu``): each passes on a device that behaves, and fails, naming the problem, on
one that does not (a kernel that computes differently, a host synchronisation inside a step,
memory kept from epoch to epoch, a checkpoint that changes the weights, a GPU that fails);
nvidia-smi's facts parsed from a fake nvidia-smi; the command line, MPI and bench steps."""

import json
import os
import shutil
import stat
import sys
import tracemalloc
from pathlib import Path

import pytest

from fake_cupy import simulated_gpu

import portacnn
from portacnn.backends import DeviceError
from portacnn.kernels import Kernels

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import gpu_check  # noqa: E402
import gpu_children  # noqa: E402
import gpu_steps  # noqa: E402


@pytest.fixture
def gpu(monkeypatch):
    """``make(index)``: simulated CuPy backends (two GPUs); ``cupy`` and ``cupyx`` imported as
    the real ones would be, and ``gpu_steps.get_backend`` giving ``cuda:N`` from them."""
    cupy, cupyx, make = simulated_gpu(count=2)
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    monkeypatch.setitem(sys.modules, "cupyx", cupyx)
    real = portacnn.get_backend
    monkeypatch.setattr(gpu_steps, "get_backend", lambda spec: real(spec) if spec == "cpu" else
                        make(gpu_check.cuda_index(spec)))
    was_tracing = tracemalloc.is_tracing()
    yield make
    if not was_tracing:
        tracemalloc.stop()


def _off_by(factor):
    """A kernel set whose tanh backward is off by ``factor``: a subtly wrong device kernel."""
    class Off(Kernels):
        @staticmethod
        def tanh_backward(*args, **kwargs):
            return Kernels.tanh_backward(*args, **kwargs) * factor
    return Off()


def test_parity_passes_on_the_same_arithmetic_and_fails_on_a_kernel_off_by_1e_3(gpu):
    _, record = gpu_steps.step_parity(gpu(0), steps=1)     # portable kernels against NumPy's
    assert record["ok"] and record["steps"] == 1
    assert record["float32"]["relative_difference"] < 1e-5
    assert record["float64"]["relative_difference"] < 1e-13
    assert "(<= 0.0001), float64 " in gpu_check._figures("parity", record)
    backend = gpu(0)
    backend.kernels = _off_by(1.001)
    _, record = gpu_steps.step_parity(backend, steps=1)
    assert not record["ok"] and not record["float32"]["ok"] and not record["float64"]["ok"]
    assert "float32: parameters differ from the CPU's" in record["error"]


def test_parity_in_float64_catches_what_float32_rounding_hides(gpu):
    backend = gpu(0)
    backend.kernels = _off_by(1 + 1e-9)
    _, record = gpu_steps.step_parity(backend, steps=1)
    assert record["float32"]["ok"] and not record["float64"]["ok"], record


def test_a_host_synchronisation_inside_a_step_is_named(gpu, monkeypatch):
    backend = gpu(0)
    assert gpu_steps.step_sync(backend)[1]["ok"]
    real = Kernels.dense_forward

    def waits(*args, **kwargs):          # as float(x) or x.get() would on a GPU
        backend.synchronize()
        return real(*args, **kwargs)

    monkeypatch.setattr(Kernels, "dense_forward", staticmethod(waits))
    _, record = gpu_steps.step_sync(backend)
    assert not record["ok"] and "Device synchronization was detected" in record["error"]
    caller, operation = record["operation"].split(" -> ")
    assert caller.startswith(str(Path("portacnn", "layers", "dense.py")))
    assert "dense_forward" in caller
    assert operation.startswith(str(Path("portacnn", "backends", "cupy.py")))


def test_device_memory_is_flat_across_epochs_unless_a_step_keeps_arrays(gpu, monkeypatch):
    backend = gpu(1)
    pool, read_on = backend.native.get_default_memory_pool(), []
    used_bytes = pool.used_bytes
    monkeypatch.setattr(pool, "used_bytes", lambda: read_on.append(backend.native.current)
                        or used_bytes())
    _, record = gpu_steps.step_memory(backend, images=32)
    assert record["ok"] and len(record["used_bytes_after_epochs"]) == 5, record
    assert read_on == [1] * 5                 # CuPy's pool counts the current device's bytes
    assert gpu_check._figures("memory", record).startswith("pool used ")
    kept = []
    real = Kernels.dense_forward

    def keeps(*args, **kwargs):          # a cache that is never emptied
        kept.append(real(*args, **kwargs))
        return kept[-1]

    monkeypatch.setattr(Kernels, "dense_forward", staticmethod(keeps))
    _, record = gpu_steps.step_memory(backend, images=32)
    assert not record["ok"] and "device memory grew by" in record["error"]


def test_checkpoints_cross_devices_both_ways_and_a_changed_weight_fails(gpu, monkeypatch):
    _, record = gpu_steps.step_checkpoint(gpu(0), images=32)
    assert record["ok"] and record["cpu_to_device"]["loaded_on"].startswith("cupy")
    assert gpu_check._figures("checkpoint", record).startswith("device to cpu: parameters equal")
    real = portacnn.load

    def changes(path, device=None):
        model = real(path, device)
        p = model.parameters()[0]
        p.value = p.value * 1.0000001
        return model

    monkeypatch.setattr(gpu_steps.portacnn, "load", changes)
    _, record = gpu_steps.step_checkpoint(gpu(0), images=32)
    assert not record["ok"] and "parameters equal False" in record["error"]


def test_every_gpu_runs_a_step_and_one_that_fails_is_named(gpu, monkeypatch):
    _, record = gpu_steps.step_devices(gpu(0))
    assert record["ok"] and [d["device"] for d in record["devices"]] == ["cuda:0", "cuda:1"]
    monkeypatch.setattr(gpu_steps, "get_backend", lambda spec: gpu(0) if spec == "cuda:0" else (
        _ for _ in ()).throw(DeviceError("cuda:1: cudaErrorDevicesUnavailable: busy")))
    _, record = gpu_steps.step_devices(gpu(0))
    assert not record["ok"] and record["devices"][0]["ok"]
    assert record["error"] == "cuda:1: DeviceError: cuda:1: cudaErrorDevicesUnavailable: busy"


def test_the_speed_threshold_fails_a_gpu_slower_than_the_cpu(gpu, monkeypatch):
    backend = gpu(0)
    monkeypatch.setattr(gpu_steps, "step_seconds", lambda be: 0.002 if be is backend else 0.05)
    assert gpu_steps.speed(backend)["speedup_over_cpu"] == pytest.approx(25)
    monkeypatch.setattr(gpu_steps, "step_seconds", lambda be: 0.09 if be is backend else 0.05)
    record = gpu_steps.speed(backend)
    assert not record["ok"] and "90.0 ms on the device and 50.0 ms on the CPU" in record["error"]


def test_the_check_on_the_simulated_gpu_runs_the_device_steps(gpu, tmp_path):
    assert gpu_check.main(["--steps", "smoke,sync,devices", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "gpu_check.md").read_text()
    assert "| sync | passed | 5 steps queued in " in text
    assert "| devices | passed | cuda:0 Fake GPU " in text and ", cuda:1 Fake GPU " in text


# --- the environment: nvidia-smi ------------------------------------------------------------

FAKE_SMI = """#!/bin/sh
case "$1" in
  --query-gpu=index,name,driver_version,memory.total,memory.used,mig*)
    [ -n "$SMI_OLD" ] && { echo 'Field "mig.mode.current" is not a valid field to query.'; exit 2; }
    echo "0, NVIDIA H200, 580.159.03, 143771, 0, Disabled, Default, Enabled"
    echo "1, NVIDIA H200, 580.159.03, 143771, 12, [N/A], Exclusive_Process, [Not Supported]";;
  --query-gpu=*) echo "0, Tesla K80, 470.82.01, 11441";;
  *) echo "| NVIDIA-SMI 580.159.03   Driver Version: 580.159.03   CUDA Version: 13.0 |";;
esac
"""


@pytest.fixture
def smi(tmp_path, monkeypatch):
    tool = tmp_path / "bin" / "nvidia-smi"
    tool.parent.mkdir()
    tool.write_text(FAKE_SMI)
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tool.parent}{os.pathsep}{os.environ['PATH']}")
    return tool


@pytest.mark.skipif(os.name != "posix", reason="the fake nvidia-smi is a shell script")
def test_nvidia_smi_facts_are_parsed_and_what_they_mean_is_noted(smi):
    _, record = gpu_children.step_env()
    facts = record["nvidia_smi"]
    assert facts["cuda_version"] == "13.0" and len(facts["gpus"]) == 2
    assert facts["gpus"][0] == {"index": 0, "name": "NVIDIA H200", "driver_version": "580.159.03",
                                "memory.total": 143771, "memory.used": 0,
                                "mig.mode.current": "Disabled", "compute_mode": "Default",
                                "ecc.mode.current": "Enabled"}
    assert facts["gpus"][1]["mig.mode.current"] is None is facts["gpus"][1]["ecc.mode.current"]
    assert record["notes"] == ["GPU 1: compute mode Exclusive_Process: one process at a time, so "
                               "two MPI ranks cannot share it"]
    assert "driver 580.159.03, CUDA 13.0: NVIDIA H200 143771 MiB" in gpu_check._figures(
        "env", record)


@pytest.mark.skipif(os.name != "posix", reason="the fake nvidia-smi is a shell script")
def test_an_old_driver_is_asked_the_basic_fields(smi, monkeypatch):
    monkeypatch.setenv("SMI_OLD", "1")
    facts = gpu_children.nvidia_smi()
    assert facts["gpus"] == [{"index": 0, "name": "Tesla K80", "driver_version": "470.82.01",
                              "memory.total": 11441}] and "error" not in facts


def test_without_nvidia_smi_the_environment_says_so_and_passes(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    _, record = gpu_children.step_env()
    assert record["ok"] and "nvidia-smi is not on the PATH" in record["nvidia_smi"]["error"]


def test_a_short_row_keeps_its_cells_and_the_line():
    rows = gpu_children.parse_gpus("0, NVIDIA A100\n\n")
    assert rows == [{"index": 0, "name": "NVIDIA A100", "raw": "0, NVIDIA A100"}]


# --- the command line, MPI, the benchmark ------------------------------------------------------

def test_the_cli_step_trains_one_epoch_on_the_device_it_names():
    _, record = gpu_children.step_cli("cpu", "numpy", timeout=60)
    assert record["ok"], record.get("error")
    assert "numpy" in record["device_line"] and record["test_accuracy"] >= 0.8


def test_the_cli_step_reports_the_cli_s_own_error():
    _, record = gpu_children.step_cli("cuda:0", "cupy", timeout=60)
    if record["ok"]:
        pytest.skip("this machine trains on cuda:0")
    assert record["error"].startswith("exited with status 2: ")
    assert "PORTACNN_DEVICE=cuda:0 -m portacnn train --epochs 1" == record["command"]


def test_without_mpiexec_the_mpi_step_is_skipped_with_the_reason(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    _, record = gpu_children.step_mpi(portacnn.get_backend("cpu"))
    assert record["ok"] and record["skipped"].startswith("mpiexec is not on the PATH")


@pytest.mark.skipif(shutil.which("mpiexec", path=f"{Path(sys.executable).parent}") is None,
                    reason="no mpiexec beside this Python")
def test_two_ranks_train_equal_replicas(monkeypatch):
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    _, record = gpu_children.step_mpi(portacnn.get_backend("cpu"), timeout=60)
    assert record["ok"], record.get("error")
    assert [r["rank"] for r in record["ranks"]] == [0, 1]
    assert record["max_parameter_difference"] == 0


def test_two_ranks_on_two_gpus_must_split_them(gpu, monkeypatch):
    def job(ranks_on):
        def run(args, timeout, **kwargs):
            assert args[1:3] == ["-n", "2"] and args[-2] == "gpu"
            ranks = [{"rank": r, "local_rank": r, "device": f"<CUDA Device {d}>",
                      "device_id": d, "loss": 0.5} for r, d in enumerate(ranks_on)]
            Path(args[-1]).write_text(json.dumps({"ranks": ranks,
                                                  "max_parameter_difference": 0.0}))
            return 0, "", ""
        return run

    monkeypatch.setattr(gpu_children.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(gpu_children.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr(gpu_children, "run_child", job([0, 1]))
    _, record = gpu_children.step_mpi(gpu(0))
    assert record["ok"] and record["layout"] == "splitting 2 GPUs"
    assert gpu_check._figures("mpi", record).startswith("splitting 2 GPUs: rank 0 on <CUDA")
    monkeypatch.setattr(gpu_children, "run_child", job([0, 0]))
    _, record = gpu_children.step_mpi(gpu(0))
    assert not record["ok"]
    assert record["error"] == "rank 1 (local rank 1) is on <CUDA Device 0>, not cuda:1"


def test_the_bench_step_reports_the_ratio_and_fails_on_the_threshold(gpu, monkeypatch):
    def bench(args, timeout, **kwargs):
        report = {"by_threads": [{"train": {"ratio_portacnn_over_torch": {"median": 1.7}}}]}
        Path(args[args.index("--json") + 1]).write_text(json.dumps(report))
        return 0, "bench output", ""

    monkeypatch.setattr(gpu_children, "run_child", bench)
    monkeypatch.setattr(gpu_children, "_torch_sees", lambda device: None)
    monkeypatch.setattr(gpu_steps, "step_seconds", lambda be: 0.002 if be.accelerator else 0.05)
    _, record = gpu_children.step_bench("cuda:0", gpu(0))
    assert record["ok"] and record["ratio_portacnn_over_torch"] == 1.7
    assert "--compare-torch" in record["command"]
    monkeypatch.setattr(gpu_steps, "step_seconds", lambda be: 0.09 if be.accelerator else 0.05)
    _, record = gpu_children.step_bench("cuda:0", gpu(0))
    assert not record["ok"] and "should be faster" in record["error"]
