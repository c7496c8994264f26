"""scripts/conv_vs_torch.py runs end to end on two shapes (what it reports is checked, not how
fast anything is: speed is measured by running the script, never by a test)."""

import sys
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="torch is not installed (the script times against it)")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import conv_vs_torch  # noqa: E402


def test_the_script_prints_one_row_per_shape_with_its_route(capsys):
    conv_vs_torch.main(["lenet2", "1x1", "--rounds", "1", "--repeats", "1"])
    rows = [line for line in capsys.readouterr().out.splitlines()
            if line.startswith("| lenet2") or line.startswith("| 1x1")]
    assert [row.split("|")[2].strip() for row in rows] == ["batch_minor", "pointwise"]
    for row in rows:
        ratios = [float(cell) for cell in row.strip("|").split("|")[3::2]]
        assert len(ratios) == 3 and all(r > 0 for r in ratios)


def test_an_unknown_shape_is_refused_with_the_choices(capsys):
    with pytest.raises(SystemExit):
        conv_vs_torch.main(["lenet9"])
    assert "unknown shape(s) lenet9: choose from lenet1" in capsys.readouterr().err
