"""scripts/gpu_check.py: one line and status 2 without a GPU; a report with every figure (run
here on the CPU with ``--device cpu``); a broken CuPy (a fake module) reported with the fix;
each step isolated and time-bounded, the report written whatever fails; the tests step on the
CuPy tests of the device asked for, failed when they skip; bench.py importing the checkout."""

import json
import os
import shutil
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from fake_cupy import NO_NVRTC, fake_cupy

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import gpu_check  # noqa: E402
import gpu_children  # noqa: E402
import gpu_steps  # noqa: E402


def test_without_a_gpu_it_says_so_in_one_line_and_exits_2():
    if gpu_check.cupy_installed() or gpu_check.gpu_present():
        pytest.skip("CuPy or a GPU is here: the no-GPU path is tested with a fake below")
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py")],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stdout.strip().splitlines()) == 1 and "no NVIDIA GPU" in proc.stdout


def test_cupy_without_a_driver_is_no_gpu_too(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(driver=0, count_error=RuntimeError(
        "cudaErrorInsufficientDriver: CUDA driver version is insufficient")))
    assert gpu_check.main(["--out", str(tmp_path)]) == 2
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "no NVIDIA driver" in out[0]
    assert not (tmp_path / "gpu_check.md").exists()


def test_a_broken_cupy_is_reported_with_the_fix(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(elementwise=NO_NVRTC))
    assert gpu_check.main(["--out", str(tmp_path)]) == 1
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    smoke = report["steps"]["smoke"]
    assert not smoke["ok"] and "NVRTC" in smoke["error"] and "portacnn[gpu]" in smoke["error"]
    text = (tmp_path / "gpu_check.md").read_text()
    assert "| smoke | FAILED |" in text and "- **smoke**: CuPy cannot compute" in text


def test_the_steps_write_one_report_with_every_figure(tmp_path, capsys):
    assert gpu_check.main(["--device", "cpu", "--steps", "smoke,parity,checkpoint",
                           "--images", "32", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    ckpt = report["steps"]["checkpoint"]
    for direction in ("device_to_cpu", "cpu_to_device"):
        assert ckpt[direction]["parameters_equal"] and ckpt[direction]["argmax_agreement"] == 1
    text = (tmp_path / "gpu_check.md").read_text()
    assert "| smoke | passed |" in text and "| checkpoint | passed |" in text
    assert "| parity | skipped | the device is the CPU" in text
    assert "report:" in capsys.readouterr().out


def test_libraries_without_cupy_name_the_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "cupy", None)          # importing cupy fails
    assert gpu_check.main(["--libraries"]) == 1
    assert "MISSING CuPy" in capsys.readouterr().out


# --- each step isolated and time-bounded, the report written whatever fails --------------------

def test_an_exception_in_the_smoke_step_is_its_failure_not_a_traceback(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy())    # no cupy.empty: AttributeError
    assert gpu_check.main(["--out", str(tmp_path)]) == 1
    smoke = json.loads((tmp_path / "gpu_check.json").read_text())["steps"]["smoke"]
    assert not smoke["ok"] and smoke["error"].startswith("AttributeError") and smoke["traceback"]
    assert "| smoke | FAILED | AttributeError" in (tmp_path / "gpu_check.md").read_text()


def test_an_exception_in_a_step_fails_that_step_and_the_next_steps_run(monkeypatch, tmp_path):
    def fail(*images):
        raise RuntimeError("cudaErrorIllegalAddress: an illegal memory access was encountered")

    monkeypatch.setattr(gpu_steps, "digits", fail)
    assert gpu_check.main(["--device", "cpu", "--steps", "smoke,checkpoint,devices",
                           "--out", str(tmp_path)]) == 1
    steps = json.loads((tmp_path / "gpu_check.json").read_text())["steps"]
    assert steps["smoke"]["ok"] and "skipped" in steps["devices"]     # the next step ran
    assert not steps["checkpoint"]["ok"]
    assert "cudaErrorIllegalAddress" in steps["checkpoint"]["error"]
    assert "| checkpoint | FAILED | RuntimeError: cudaErrorIllegalAddress" in (
        tmp_path / "gpu_check.md").read_text()


def test_an_in_process_step_past_its_budget_is_stopped(monkeypatch, tmp_path):
    monkeypatch.setattr(gpu_steps, "digits", lambda *images: time.sleep(30))
    monkeypatch.setitem(gpu_check.BUDGETS, "checkpoint", 0.5)
    t0 = time.perf_counter()
    assert gpu_check.main(["--device", "cpu", "--steps", "smoke,checkpoint",
                           "--out", str(tmp_path)]) == 1
    assert time.perf_counter() - t0 < 15
    step = json.loads((tmp_path / "gpu_check.json").read_text())["steps"]["checkpoint"]
    assert not step["ok"] and "past its budget of 0.5 s" in step["error"]


def test_the_steps_end_within_the_total_and_the_rest_are_recorded(monkeypatch, tmp_path):
    def slow(*images):
        time.sleep(30)

    monkeypatch.setattr(gpu_steps, "digits", slow)
    monkeypatch.setattr(gpu_check, "TOTAL_SECONDS", 1.5)     # checkpoint takes what is left
    monkeypatch.setattr(gpu_check, "MIN_SECONDS", 0.5)
    t0 = time.perf_counter()
    assert gpu_check.main(["--device", "cpu", "--steps", "smoke,checkpoint,devices",
                           "--out", str(tmp_path)]) == 1
    assert time.perf_counter() - t0 < 15
    steps = json.loads((tmp_path / "gpu_check.json").read_text())["steps"]
    assert "past its budget" in steps["checkpoint"]["error"]
    assert steps["devices"]["error"].startswith("not run: the check's 1.5 s were spent")


# --- the tests step: the CuPy tests of the device asked for ------------------------------------

FAKE_SUITE = """
import os
import pytest


def test_of_no_backend():                   # passes anywhere: must not make the step pass
    pass


@pytest.mark.parametrize("backend", ["cupy"])
def test_conv(backend):
    if os.environ["FAKE_SUITE"] == "skip":
        pytest.skip("cudaErrorNoDevice: no CUDA-capable device is detected")
    if os.environ["FAKE_SUITE"] == "hang":
        import time
        time.sleep(60)
    assert os.environ["PORTACNN_TEST_BACKENDS"] == "cupy"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == os.environ["FAKE_EXPECT_GPU"]


@pytest.mark.parametrize("backend", ["cupy"])
def test_against_torch(backend):
    pytest.skip("torch is not installed (optional oracle)")
"""


@pytest.fixture
def cupy_suite(monkeypatch, tmp_path):
    """gpu_check on a simulated CuPy with a smoke test that passes, its tests step on a fake
    suite (tmp/tests/test_fake.py): ``run(outcome, device)`` -> (status, tests step record)."""
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(count=4))
    fake_backend = types.SimpleNamespace(accelerator=True, name="cupy")
    monkeypatch.setattr(gpu_steps, "step_smoke", lambda device: (fake_backend, {
        "ok": True, "seconds": 0.0, "backend": "CuPy (fake)", "device": {}}))
    root = tmp_path / "checkout"
    (root / "tests").mkdir(parents=True)
    (root / "tests" / "test_fake.py").write_text(FAKE_SUITE)
    monkeypatch.setattr(gpu_children, "ROOT", root)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)

    def run(outcome, device="cuda:1", expect_gpu="1"):
        monkeypatch.setenv("FAKE_SUITE", outcome)
        monkeypatch.setenv("FAKE_EXPECT_GPU", expect_gpu)
        out = tmp_path / "report"
        status = gpu_check.main(["--device", device, "--steps", "smoke,tests",
                                 "--out", str(out)])
        return status, json.loads((out / "gpu_check.json").read_text())["steps"]["tests"]

    return run


def test_the_tests_step_runs_the_cupy_tests_on_the_device_asked_for(cupy_suite):
    status, tests = cupy_suite("pass", "cuda:1", expect_gpu="1")
    assert status == 0 and tests["ok"], tests
    assert tests["counts"] == {"passed": 1, "failed": 0, "skipped": 0, "optional_skipped": 1}
    assert tests["cuda_visible_devices"] == "1"


def test_the_tests_step_fails_when_the_cupy_tests_skip(cupy_suite):
    status, tests = cupy_suite("skip")
    assert status == 1 and not tests["ok"]
    assert "no cupy test passed" in tests["error"] and "cudaErrorNoDevice" in tests["error"]


def test_the_tests_step_past_its_budget_is_killed(cupy_suite, monkeypatch):
    monkeypatch.setitem(gpu_check.BUDGETS, "tests", 3)
    t0 = time.perf_counter()
    status, tests = cupy_suite("hang")
    assert time.perf_counter() - t0 < 40
    assert status == 1 and "past its budget of 3 s" in tests["error"]


def test_the_child_sees_the_gpu_asked_for_within_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    assert gpu_check.child_gpu(gpu_check.cuda_index("cuda:1")) == "5"
    assert gpu_check.child_gpu(gpu_check.cuda_index("gpu")) == "4"
    with pytest.raises(ValueError, match=r"cuda:2 is not among CUDA_VISIBLE_DEVICES='4,5'"):
        gpu_check.child_gpu(2)


def test_without_pytest_the_tests_step_says_how_to_install_it(monkeypatch):
    real = gpu_check.importlib.util.find_spec
    monkeypatch.setattr(gpu_children.importlib.util, "find_spec",
                        lambda name, *a: None if name == "pytest" else real(name, *a))
    _, record = gpu_children.step_tests("cupy", "gpu")
    assert not record["ok"] and "pip install pytest" in record["error"]


def test_the_suite_collects_without_an_optional_test_library(tmp_path):
    """A GPU machine with pytest but not hypothesis: the tests step must not end in a
    collection error (test_kernel_properties.py skips instead)."""
    shim = tmp_path / "shim" / "hypothesis"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'hypothesis'\", name='hypothesis')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(shim.parent), str(ROOT)])}
    # hypothesis's own pytest plugin is absent where hypothesis is
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-p", "no:hypothesispytest", "--collect-only",
                           str(ROOT / "tests" / "test_kernel_properties.py")],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode in (0, 5), proc.stdout[-2000:]       # 5: nothing collected
    assert "error" not in proc.stdout.lower() and "skipped" in proc.stdout


# --- the bench step from a checkout without an install -----------------------------------------

def test_bench_imports_the_checkouts_portacnn_without_an_install(tmp_path):
    checkout = tmp_path / "checkout"
    shutil.copytree(ROOT / "portacnn", checkout / "portacnn",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (checkout / "scripts").mkdir()
    for name in ("bench.py", "tutorial_lenet.py"):
        shutil.copy(ROOT / "scripts" / name, checkout / "scripts" / name)
    shutil.copytree(ROOT / "scripts" / "benchmarks", checkout / "scripts" / "benchmarks",
                    ignore=shutil.ignore_patterns("__pycache__"))
    # -I: no PYTHONPATH, no current directory, no script directory on sys.path
    code = ("import runpy, sys; runpy.run_path(sys.argv[1], run_name='bench'); "
            "print(sys.modules['portacnn'].__file__)")
    proc = subprocess.run([sys.executable, "-I", "-c", code,
                           str(checkout / "scripts" / "bench.py")],
                          cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert Path(proc.stdout.strip()).resolve().is_relative_to(checkout.resolve())
