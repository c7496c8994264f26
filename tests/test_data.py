"""MNIST data: IDX parsing, loaders, the bundled sample, and downloads from a local server."""

import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest

from portacnn.data import (DataError, IdxError, batches, download_mnist, load_mnist, load_sample,
                           normalize, read_idx)

from helpers import idx_bytes, mnist_registry, write_mnist


@pytest.mark.parametrize("gz", [True, False])
def test_load_mnist_directory_raw_or_gzipped(tmp_path, gz):
    arrays = write_mnist(tmp_path, gz=gz)
    (x, y), (xt, yt) = load_mnist(tmp_path)
    assert np.array_equal(x, arrays["train-images-idx3-ubyte"])
    assert np.array_equal(yt, arrays["t10k-labels-idx1-ubyte"])
    assert x.dtype == np.uint8 and x.shape == (12, 28, 28) and xt.shape == (5, 28, 28)


def test_idx_errors_name_the_problem(tmp_path):
    good = idx_bytes(np.zeros((3, 28, 28)))
    cases = {
        "magic.idx": (b"\x12\x34" + good[2:], "bad magic number"),
        "short.idx": (good[:-10], "truncated"),
        "long.idx": (good + b"\0", "too long"),
        "header.idx": (good[:9], "header is incomplete"),
        "empty.idx": (b"", "bad magic number empty"),
    }
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(IdxError, match=message):
            read_idx(tmp_path / name)
    (tmp_path / "labels.idx").write_bytes(idx_bytes(np.zeros(3)))
    with pytest.raises(IdxError, match=r"1 dimension\(s\) but 3 were expected"):
        read_idx(tmp_path / "labels.idx", ndim=3)
    (tmp_path / "cut.gz").write_bytes(gzip.compress(good)[:-20])
    with pytest.raises(IdxError, match="damaged or truncated gzip"):
        read_idx(tmp_path / "cut.gz")


def test_load_mnist_missing_or_inconsistent_files(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_mnist(tmp_path / "nope")
    write_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"has no t10k-labels-idx1-ubyte\[.gz\].*--download"):
        load_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(4)))
    with pytest.raises(IdxError, match="t10k: 5 images but 4 labels"):
        load_mnist(tmp_path)


def test_bundled_sample_is_stratified_real_mnist():
    (x, y), (xt, yt) = load_sample()
    assert x.shape == (4000, 28, 28) and xt.shape == (1000, 28, 28) and x.dtype == np.uint8
    assert np.bincount(y, minlength=10).tolist() == [400] * 10
    assert np.bincount(yt, minlength=10).tolist() == [100] * 10
    assert len(set(y[:50].tolist())) > 5              # shuffled, not sorted by label
    # real digits: dark background, bright strokes, centred mass
    assert x[:, 0, :].max() == 0 and x.max() == 255
    assert 0.10 < x.mean() / 255 < 0.16
    # no test image is also a training image
    train_hashes = {hashlib.sha1(img.tobytes()).hexdigest() for img in x}
    assert not any(hashlib.sha1(img.tobytes()).hexdigest() in train_hashes for img in xt)
    assert load_mnist() is not None


def test_normalize_and_batches():
    img = np.full((2, 28, 28), 255, dtype=np.uint8)
    out = normalize(img)
    assert out.shape == (2, 1, 28, 28) and out.dtype == np.float32
    assert np.allclose(out, (1.0 - 0.1307) / 0.3081)
    x, y = np.arange(10), np.arange(10) * 2
    first = [yb.tolist() for _, yb in batches(x, y, 4, seed=1)]
    again = [yb.tolist() for _, yb in batches(x, y, 4, seed=1)]
    assert first == again and [len(b) for b in first] == [4, 4, 2]
    assert sorted(sum(first, [])) == list(range(0, 20, 2)) and sum(first, []) != list(range(0, 20, 2))
    assert [xb.tolist() for xb, _ in batches(x, y, 5, shuffle=False)] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]


# --- downloads from a server on 127.0.0.1 ---------------------------------------------------

def test_download_verifies_and_loads(server, tmp_path):
    url, handler = server
    files, hashes = mnist_registry(tmp_path)
    handler.files = {f"/good/{k}": v for k, v in files.items()}
    target = download_mnist(tmp_path / "cache", mirrors=[url + "/good/"], files=hashes,
                            progress=False, timeout=5)
    (x, y), _ = load_mnist(target)
    assert x.shape == (12, 28, 28)
    n = len(handler.requests)
    download_mnist(tmp_path / "cache", mirrors=[url + "/good/"], files=hashes, progress=False)
    assert len(handler.requests) == n              # cached files are not fetched again


def test_corrupted_download_leaves_nothing_and_falls_back_to_the_next_mirror(server, tmp_path):
    url, handler = server
    files, hashes = mnist_registry(tmp_path)
    bad = {f"/bad/{k}": v[:-1] + bytes([v[-1] ^ 0xFF]) for k, v in files.items()}
    handler.files = {**bad, **{f"/good/{k}": v for k, v in files.items()}}
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=r"(?s)could not download .*bad/.*does not match the known hash"):
        download_mnist(cache, mirrors=[url + "/bad/"], files=hashes, progress=False, timeout=5)
    assert not any(p.is_file() for p in cache.rglob("*")), list(cache.rglob("*"))
    target = download_mnist(cache, mirrors=[url + "/bad/", url + "/good/"], files=hashes,
                            progress=False, timeout=5)
    assert load_mnist(target)[0][0].shape == (12, 28, 28)


def test_dropped_connection_leaves_nothing(server, tmp_path):
    url, handler = server
    files, hashes = mnist_registry(tmp_path)
    handler.files = {f"/drop/{k}": "drop" for k in files}
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="could not download"):
        download_mnist(cache, mirrors=[url + "/drop/"], files=hashes, progress=False, timeout=5)
    assert not any(p.is_file() for p in cache.rglob("*"))
    with pytest.raises(DataError, match="could not download"):
        download_mnist(cache, mirrors=[url + "/missing/"], files=hashes, progress=False, timeout=5)


def test_download_without_pooch_names_the_extra(hide_module, tmp_path):
    hide_module("pooch")
    with pytest.raises(DataError, match=r'pip install "portacnn\[data\]"'):
        download_mnist(tmp_path)


def test_default_cache_dir_follows_environment(monkeypatch, tmp_path):
    from portacnn.data import default_cache_dir

    monkeypatch.setenv("PORTACNN_DATA", str(tmp_path))
    assert default_cache_dir() == Path(tmp_path)
