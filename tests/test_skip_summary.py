"""The suite's own report: skips are counted by reason (tests/conftest.py's hook), not listed
one line each, while failures are still listed by name (pyproject's ``addopts``)."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SAMPLE = '''
import pytest

@pytest.mark.parametrize("i", range(3))
def test_needs_a_library(i):
    pytest.skip("somelib is not installed")

def test_needs_a_gpu():
    pytest.skip("no GPU here")

def test_broken():
    assert 1 == 2
'''


def test_skips_are_counted_by_reason_and_failures_still_named(tmp_path):
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    # The project's settings (-c) and its conftest as a plugin, on a module of its own.
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-c", str(ROOT / "pyproject.toml"), "-p", "conftest",
         "-p", "no:cacheprovider", str(tmp_path / "test_sample.py")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)])})
    out = res.stdout
    assert res.returncode == 1, out + res.stderr
    assert "SKIPPED [" not in out                          # no line per skipped test
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if "4 skipped, by reason" in line)
    assert [line.split(None, 1) for line in lines[start + 1:start + 3]] == [
        ["3", "somelib is not installed"], ["1", "no GPU here"]]
    assert any(line.startswith("FAILED ") and "test_broken" in line for line in lines)
    assert lines[-1].startswith("=") and "1 failed" in lines[-1] and "4 skipped" in lines[-1]
