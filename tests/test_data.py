"""MNIST data: IDX parsing, loaders, the bundled sample, and downloads from a local server."""

import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest

from portacnn.data import (DataError, IdxError, batches, download_mnist, load_mnist, load_sample,
                           normalize, read_idx)

from helpers import idx_bytes, mnist_registry, write_cifar10, write_mnist


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


# --- Fashion-MNIST and CIFAR-10: files in the real formats, written here -----------------------

def test_fashion_mnist_reads_its_idx_files_and_defaults_to_its_cache_folder(tmp_path, monkeypatch):
    from portacnn.data import load_fashion_mnist

    arrays = write_mnist(tmp_path / "fashion-mnist", gz=False)
    (x, y), (xt, yt) = load_fashion_mnist(tmp_path / "fashion-mnist")
    assert np.array_equal(x, arrays["train-images-idx3-ubyte"]) and x.dtype == np.uint8
    assert x.shape == (12, 28, 28) and np.array_equal(yt, arrays["t10k-labels-idx1-ubyte"])
    monkeypatch.setenv("PORTACNN_DATA", str(tmp_path))
    assert np.array_equal(load_fashion_mnist()[1][0], xt)          # the cache folder
    monkeypatch.setenv("PORTACNN_DATA", str(tmp_path / "empty"))
    with pytest.raises(DataError, match=r"Fashion-MNIST directory \S+fashion-mnist does not "
                                        r"exist: add --download"):
        load_fashion_mnist()


@pytest.mark.parametrize("archive", [True, False])
def test_cifar10_reads_the_binary_version_channels_first(tmp_path, archive):
    from portacnn.data import load_cifar10

    arrays = write_cifar10(tmp_path, n=3, archive=archive)
    (x, y), (xt, yt) = load_cifar10(tmp_path)
    assert x.shape == (15, 3, 32, 32) and x.dtype == np.uint8 and y.dtype == np.uint8
    assert np.array_equal(x[3:6], arrays["data_batch_2.bin"][0])      # batches 1..5 in order
    assert np.array_equal(y, np.concatenate([arrays[f"data_batch_{i}.bin"][1] for i in range(1, 6)]))
    assert np.array_equal(xt, arrays["test_batch.bin"][0]) and np.array_equal(yt, arrays["test_batch.bin"][1])
    if archive:
        assert load_cifar10(tmp_path / "cifar-10-binary.tar.gz")[1][0].shape == (3, 3, 32, 32)
    else:
        assert load_cifar10(tmp_path / "cifar-10-batches-bin")[1][0].shape == (3, 3, 32, 32)


def test_cifar10_record_layout_is_label_then_red_green_blue_planes():
    from portacnn.data import read_cifar10_batch

    record = bytes([7]) + bytes([1] * 1024 + [2] * 1024 + [3] * 1024)
    x, y = read_cifar10_batch(record * 2)
    assert y.tolist() == [7, 7] and x.shape == (2, 3, 32, 32)
    assert [int(x[0, c].min()) for c in range(3)] == [1, 2, 3] and x[1, 2].max() == 3


def test_cifar10_refuses_damaged_files_naming_the_file_and_the_fix(tmp_path):
    from portacnn.data import load_cifar10

    folder = tmp_path / "bin" / "cifar-10-batches-bin"
    write_cifar10(tmp_path / "bin", archive=False)
    cut = folder / "data_batch_3.bin"
    cut.write_bytes(cut.read_bytes()[:-5])
    with pytest.raises(DataError, match=r"data_batch_3.bin holds 9214 bytes, not a whole number "
                                        r"of 3073-byte .*truncated.*download it again"):
        load_cifar10(tmp_path / "bin")
    cut.write_bytes(bytes([12]) + bytes(3072))                       # a label out of 0-9
    with pytest.raises(DataError, match=r"data_batch_3.bin: record 0 has label 12.*CIFAR-100"):
        load_cifar10(tmp_path / "bin")
    (folder / "test_batch.bin").unlink()
    with pytest.raises(DataError, match=r"not found in \S+: no test_batch.bin there.*--download"):
        load_cifar10(tmp_path / "bin")
    with pytest.raises(DataError, match="no such directory"):
        load_cifar10(tmp_path / "nowhere")
    write_cifar10(tmp_path / "gz")
    archive = tmp_path / "gz" / "cifar-10-binary.tar.gz"
    archive.write_bytes(archive.read_bytes()[:-300])
    with pytest.raises(DataError, match=r"cifar-10-binary.tar.gz is a damaged or truncated "
                                        r"tar.gz .*download it again"):
        load_cifar10(archive)
    import tarfile

    with tarfile.open(tmp_path / "python.tar.gz", "w:gz") as tar:        # the pickled version
        tar.add(folder / "data_batch_1.bin", "cifar-10-batches-py/data_batch_1")
    with pytest.raises(DataError, match=r"has no cifar-10-batches-bin/data_batch_1.bin.*pickled"):
        load_cifar10(tmp_path / "python.tar.gz")


def test_cifar10_downloads_the_tarball_verified(server, tmp_path):
    from portacnn.data import download_cifar10, load_cifar10

    url, handler = server
    write_cifar10(tmp_path / "src")
    data = (tmp_path / "src" / "cifar-10-binary.tar.gz").read_bytes()
    handler.files = {"/c/cifar-10-binary.tar.gz": data,
                     "/bad/cifar-10-binary.tar.gz": data[:-1] + bytes([data[-1] ^ 1])}
    files = {"cifar-10-binary.tar.gz": hashlib.sha256(data).hexdigest()}
    with pytest.raises(DataError, match=r"could not download cifar-10-binary.tar.gz"):
        download_cifar10(tmp_path / "cache", mirrors=[url + "/bad/"], files=files,
                         progress=False, timeout=5)
    target = download_cifar10(tmp_path / "cache", mirrors=[url + "/c/"], files=files,
                              progress=False, timeout=5)
    assert load_cifar10(target)[0][0].shape == (15, 3, 32, 32)


def test_normalize_takes_one_mean_and_std_per_channel():
    from portacnn.data import CIFAR10_MEAN, CIFAR10_STD

    img = np.full((2, 3, 4, 4), 255, dtype=np.uint8)
    out = normalize(img, CIFAR10_MEAN, CIFAR10_STD)
    assert out.shape == (2, 3, 4, 4) and out.dtype == np.float32
    assert np.allclose(out[:, 2], (1 - CIFAR10_MEAN[2]) / CIFAR10_STD[2])
    with pytest.raises(ValueError, match="3 and 3 values for 1 channel"):
        normalize(img[:, :1], CIFAR10_MEAN, CIFAR10_STD)
