"""Checkpoints: round trips across backends, atomic writes, and files that must be refused."""

import json
import os

import numpy as np
import pytest

import portacnn
from portacnn import CheckpointError, Dropout, get_backend
from portacnn.models import lenet5
from portacnn.optim import Adam

from helpers import assert_close

pytest.importorskip("safetensors", reason="safetensors is a dependency")


@pytest.fixture
def trained(tmp_path):
    from portacnn.data import load_sample, normalize

    (x, y), (xt, _) = load_sample()
    model = lenet5(seed=1)
    model.fit(normalize(x[:256]), y[:256], epochs=1, batch_size=32, optimizer=Adam(1e-3),
              verbose=0)
    return model, normalize(xt[:64])


def test_round_trip_on_every_backend_predicts_identically(trained, tmp_path, core_backend):
    model, x = trained
    path = tmp_path / "lenet.safetensors"
    model.save(path)
    loaded = portacnn.load(path, device=core_backend)
    assert loaded.backend == core_backend
    expected = model.predict(x)
    got = core_backend.to_numpy(loaded.predict(core_backend.asarray(x)))
    if core_backend == model.backend:
        assert np.array_equal(got, expected)          # the same arithmetic, bit for bit
    else:
        # other kernels (the CPU overrides vs the portable ones) or another BLAS sum in
        # another order: equal up to float32 rounding
        assert_close(got, expected, dtype="float32")
    assert [type(a) for a in loaded.layers] == [type(b) for b in model.layers]
    assert isinstance(loaded.optimizer, Adam) and loaded.optimizer.steps == 8
    assert set(loaded.optimizer.state) == set(model.optimizer.state)


def test_loaded_optimizer_continues_training_identically(trained, tmp_path):
    model, x = trained
    path = tmp_path / "m.safetensors"
    model.save(path)
    copy = portacnn.load(path)
    y = np.arange(len(x)) % 10
    h1 = model.fit(x, y, epochs=1, batch_size=16, optimizer=model.optimizer, verbose=0)
    h2 = copy.fit(x, y, epochs=1, batch_size=16, optimizer=copy.optimizer, verbose=0)
    assert h1["loss"] == pytest.approx(h2["loss"], rel=1e-6)


def test_file_is_plain_safetensors_with_a_described_architecture(trained, tmp_path):
    from safetensors import safe_open

    model, _ = trained
    path = tmp_path / "m.safetensors"
    model.save(path, include_optimizer=False)
    with safe_open(str(path), framework="np") as fh:
        keys = set(fh.keys())
        meta = json.loads(fh.metadata()["portacnn"])
        w = fh.get_tensor("layers.0.weight")
    assert "layers.0.weight" in keys and "layers.11.bias" in keys
    assert not any(k.startswith("optimizer.") for k in keys)
    assert w.shape == (6, 1, 5, 5) and w.dtype == np.float32
    assert meta["format_version"] == 1 and meta["model"]["dtype"] == "float32"
    assert [l["type"] for l in meta["model"]["layers"]][:3] == ["Conv2D", "Tanh", "AvgPool2D"]
    assert portacnn.load(path).optimizer is None


def test_save_is_atomic(trained, tmp_path, monkeypatch):
    model, _ = trained
    path = tmp_path / "m.safetensors"
    model.save(path)
    before = path.read_bytes()

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        lenet5(seed=9).save(path)
    assert path.read_bytes() == before                 # the old checkpoint is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]   # no temp left


def test_bad_files_are_refused_with_clear_errors(trained, tmp_path):
    model, _ = trained
    path = tmp_path / "m.safetensors"
    model.save(path)
    data = path.read_bytes()
    cases = {
        "missing.safetensors": (None, "does not exist"),
        "truncated.safetensors": (data[: len(data) // 2], "truncated or corrupted"),
        "garbage.safetensors": (b"\x00" * 64, "truncated or corrupted"),
        "header.safetensors": (data[:8] + b"{" * 20 + data[28:], "truncated or corrupted"),
    }
    for name, (content, message) in cases.items():
        if content is not None:
            (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError, match=message):
            portacnn.load(tmp_path / name)

    from safetensors.numpy import save_file

    save_file({"w": np.zeros(3, np.float32)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(CheckpointError, match="not a portacnn checkpoint"):
        portacnn.load(tmp_path / "other.safetensors")


def _rewrite(path, out, tensors_fn=None, meta_fn=None):
    from safetensors import safe_open
    from safetensors.numpy import save_file

    with safe_open(str(path), framework="np") as fh:
        meta = fh.metadata()
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    desc = json.loads(meta["portacnn"])
    if tensors_fn:
        tensors_fn(tensors)
    if meta_fn:
        meta_fn(desc)
    save_file(tensors, str(out), metadata={"portacnn": json.dumps(desc)})


def test_mismatched_checkpoints_never_load_half(trained, tmp_path):
    model, _ = trained
    path = tmp_path / "m.safetensors"
    model.save(path)
    bad = tmp_path / "bad.safetensors"
    _rewrite(path, bad, tensors_fn=lambda t: t.update({"layers.7.weight": np.zeros((120, 399), np.float32)}))
    with pytest.raises(CheckpointError, match=r"layers.7.weight is float32\(120, 399\) but the "
                                              r"architecture needs float32\(120, 400\)"):
        portacnn.load(bad)
    _rewrite(path, bad, tensors_fn=lambda t: t.pop("layers.3.bias"))
    with pytest.raises(CheckpointError, match=r"missing \['layers.3.bias'\]"):
        portacnn.load(bad)
    _rewrite(path, bad, meta_fn=lambda d: d.update(format_version=99))
    with pytest.raises(CheckpointError, match="v99; this portacnn reads portacnn v1 or older"):
        portacnn.load(bad)
    _rewrite(path, bad, meta_fn=lambda d: d["model"]["layers"][0].update(type="Conv3D"))
    with pytest.raises(CheckpointError, match="architecture cannot be rebuilt"):
        portacnn.load(bad)
    _rewrite(path, bad, tensors_fn=lambda t: t.update({"optimizer.99.weight.exp_avg": np.zeros(2, np.float32)}))
    with pytest.raises(CheckpointError, match="optimizer state optimizer.99.weight.exp_avg names no parameter"):
        portacnn.load(bad)


def test_float64_and_dropout_models_round_trip(tmp_path):
    model = portacnn.Sequential([portacnn.Flatten(), Dropout(0.3), portacnn.Dense(4)],
                                input_shape=(1, 3, 3), dtype="float64", seed=2)
    model.save(tmp_path / "d.safetensors")
    loaded = portacnn.load(tmp_path / "d.safetensors", device="array_api_strict")
    assert loaded.dtype_name == "float64" and loaded.layers[1].p == 0.3
    x = np.random.default_rng(0).normal(size=(5, 1, 3, 3))
    assert np.allclose(get_backend("array_api_strict").to_numpy(loaded.predict(x)), model.predict(x),
                       rtol=1e-12)
