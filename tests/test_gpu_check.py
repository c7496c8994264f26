"""scripts/gpu_check.py: one line and status 2 without a GPU; a report with every figure (run
here on the CPU with ``--device cpu``); a broken CuPy (a fake module) reported with the fix."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fake_cupy import NO_NVRTC, fake_cupy

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import gpu_check  # noqa: E402


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
    assert "| smoke | FAILED |" in text and "## Smoke test failed" in text


def test_the_steps_write_one_report_with_every_figure(tmp_path, capsys):
    assert gpu_check.main(["--device", "cpu", "--steps", "smoke,train,checkpoint",
                           "--epochs", "2", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    train, ckpt = report["steps"]["train"], report["steps"]["checkpoint"]
    assert len(train["device"]["epoch_seconds"]) == 2 and "first_epoch_extra_seconds" in train
    assert train["accuracy_gap"] <= gpu_check.ACCURACY_GAP
    assert train["device"]["test_accuracy"] > 0.8
    assert ckpt["argmax_agreement"] == 1.0 and ckpt["max_probability_gap"] <= 1e-4
    text = (tmp_path / "gpu_check.md").read_text()
    for step in ("smoke", "train", "checkpoint"):
        assert f"| {step} | passed |" in text
    assert "report:" in capsys.readouterr().out


def test_libraries_without_cupy_name_the_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "cupy", None)          # importing cupy fails
    assert gpu_check.main(["--libraries"]) == 1
    assert "MISSING CuPy" in capsys.readouterr().out
