"""What several test modules share: the backend matrix, the tolerance of a comparison, the
kernel geometries, a small network and its data, MNIST files and a local mirror serving them.

Test modules import these (``from helpers import assert_close``); fixtures live in conftest.py
and are used by name. No test module imports another test module or conftest
(tests/test_architecture.py checks).
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import os

import numpy as np
import pytest

from portacnn import Conv2D, Dense, Dropout, Flatten, MaxPool2D, ReLU, Sequential
from portacnn.backends import DeviceError, get_backend, to_numpy

# --- the backend matrix -----------------------------------------------------------------------

ALL_BACKENDS = ["numpy", "array_api_strict", "strict-device1", "torch", "jax", "cupy"]
SELECTED = [b for b in os.environ.get("PORTACNN_TEST_BACKENDS", ",".join(ALL_BACKENDS)).split(",")
            if b]


def make_backend(name):
    """Build the backend named in the test matrix, or skip the test with the reason."""
    if name == "torch":
        pytest.importorskip("torch", reason="torch is not installed (optional backend)")
    if name == "jax":
        jax = pytest.importorskip("jax", reason="jax is not installed (optional backend)")
        jax.config.update("jax_enable_x64", True)
    if name == "cupy":
        pytest.importorskip("cupy", reason="cupy is not installed", exc_type=ImportError)
        try:
            return get_backend("cupy")            # runs the smoke test on the device
        except DeviceError as exc:
            pytest.skip(str(exc))
    if name == "strict-device1":
        import array_api_strict

        return get_backend("array_api_strict", device=array_api_strict.Device("device1"))
    return get_backend(name)


# --- comparisons ------------------------------------------------------------------------------

TOL = {"float64": 1e-10, "float32": 1e-4}


def assert_close(actual, expected, dtype="float64", scale=None):
    """Compare to a host reference with a tolerance relative to the reference's magnitude."""
    actual = to_numpy(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    ref = scale if scale is not None else max(float(np.max(np.abs(expected), initial=0.0)), 1.0)
    err = float(np.max(np.abs(actual - expected), initial=0.0)) / ref
    assert err <= TOL[dtype], f"relative error {err:.3g} > {TOL[dtype]:g}"


# --- kernel geometries: (input shape (N, C, H, W), kernel, stride, padding) -------------------

# strides 1-3, paddings 0/1/2/same/valid, rectangular kernels, batch 1, and sizes the stride
# does not tile (border pixels no window covers).
CASES = [
    ((2, 3, 7, 8), 3, 1, 0),
    ((1, 2, 9, 9), 3, 2, 1),
    ((2, 1, 10, 7), (3, 2), 3, 2),
    ((1, 3, 8, 8), (2, 3), (2, 1), "same"),
    ((2, 2, 7, 9), 4, 3, "same"),
    ((1, 2, 6, 5), (3, 1), 1, "valid"),
    ((3, 2, 8, 6), 2, 3, 0),          # stride 3 over 8: last rows uncovered
    ((1, 1, 5, 5), 5, 1, (1, 2)),
    ((2, 2, 5, 6), 1, 2, 2),          # 1x1: padding wider than the kernel, windows of padding only
]

# pooling: a stride of None is the kernel's size. Both routes of kernels/pooling.py, windows
# that tile the input (stride >= kernel) and overlapping ones, in every shape each route takes
# (tests/test_kernels.py checks that none is missing).
POOL_CASES = [
    ((2, 3, 8, 8), 2, None, 0),               # tiles exactly (LeNet's 2x2/2)
    ((2, 2, 9, 7), 2, None, 0),               # tiles; last row and column left out
    ((1, 2, 7, 9), (3, 2), (3, 2), 0),        # tiles; last row left out
    ((1, 2, 6, 6), 3, 3, "same"),             # tiles exactly
    ((1, 2, 7, 7), 2, 2, "same"),             # tiles; windows reach the bottom/right padding
    ((1, 2, 8, 7), 2, 3, 1),                  # gaps between windows (stride > kernel)
    ((2, 1, 5, 6), (2, 1), (3, 2), 0),        # gaps; the last block passes the input's edge
    ((1, 2, 7, 9), 3, 2, 1),                  # overlapping
    ((2, 1, 9, 7), (2, 3), (3, 1), 0),        # overlapping along W only
    ((2, 2, 10, 10), 3, 1, "valid"),          # overlapping, stride 1
]


def case_id(case):
    """A test id for a geometry: ``2x3x7x8-k3-s1-p0``."""
    shape, k, s, p = case
    return f"{'x'.join(map(str, shape))}-k{k}-s{s}-p{p}"


# --- a small network and data it learns -------------------------------------------------------

def small_net(device="cpu", dtype="float32", seed=0, dropout=False):
    """Conv(4, 3x3) - ReLU - MaxPool - Flatten - [Dropout] - Dense(3) on 1x6x6 images."""
    layers = [Conv2D(4, 3, padding=1), ReLU(), MaxPool2D(2), Flatten()]
    layers += [Dropout(0.5)] if dropout else []
    layers += [Dense(3)]
    return Sequential(layers, input_shape=(1, 6, 6), device=device, dtype=dtype, seed=seed)


def toy_data(n=60, seed=0):
    """Three classes a tiny CNN separates easily: a bright row, a bright column, or noise."""
    rng = np.random.default_rng(seed)
    x = rng.normal(scale=0.3, size=(n, 1, 6, 6)).astype(np.float32)
    y = np.arange(n) % 3
    x[y == 0, 0, 2, :] += 2.0
    x[y == 1, 0, :, 3] += 2.0
    return x, y


# --- MNIST files and a mirror on 127.0.0.1 ----------------------------------------------------

def idx_bytes(array):
    """``array`` (uint8) in the IDX format MNIST's files use."""
    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.tobytes()


def write_mnist(directory, n_train=12, n_test=5, gz=True, seed=0):
    """The four MNIST files (random images and labels) in ``directory``; returns the arrays."""
    rng = np.random.default_rng(seed)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
              "train-labels-idx1-ubyte": rng.integers(0, 10, n_train),
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
              "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test)}
    directory.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays.items():
        data = idx_bytes(arr)
        if gz:
            (directory / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (directory / name).write_bytes(data)
    return arrays


def cifar10_bytes(images, labels):
    """Records of CIFAR-10's binary version: a label byte, then the image's 3,072 bytes (CHW)."""
    labels = np.asarray(labels, dtype=np.uint8)[:, None]
    return np.concatenate([labels, np.asarray(images, dtype=np.uint8).reshape(len(labels), -1)],
                          axis=1).tobytes()


def write_cifar10(directory, n=3, archive=True, seed=0):
    """CIFAR-10's six batch files with ``n`` random images each, as the tarball
    ``cifar-10-binary.tar.gz`` (``archive``) or the folder ``cifar-10-batches-bin`` in
    ``directory``; returns ``{file name: (images (n, 3, 32, 32), labels (n,))}``."""
    import io
    import tarfile

    rng = np.random.default_rng(seed)
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    arrays = {name: (rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8),
                     rng.integers(0, 10, n, dtype=np.uint8)) for name in names}
    folder = directory / "cifar-10-batches-bin"
    directory.mkdir(parents=True, exist_ok=True)
    if archive:
        with tarfile.open(directory / "cifar-10-binary.tar.gz", "w:gz") as tar:
            for name, (x, y) in arrays.items():
                data = cifar10_bytes(x, y)
                info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    else:
        folder.mkdir(exist_ok=True)
        for name, (x, y) in arrays.items():
            (folder / name).write_bytes(cifar10_bytes(x, y))
    return arrays


def mnist_registry(tmp_path):
    """MNIST's gzipped files as a mirror serves them, and their SHA-256:
    ``({file name: bytes}, {file name: hex digest})``."""
    src = tmp_path / "src"
    write_mnist(src)
    files = {p.name: p.read_bytes() for p in sorted(src.iterdir())}
    return files, {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}


class MirrorHandler(http.server.BaseHTTPRequestHandler):
    """Serves ``files`` ({URL path: bytes}; the value ``"drop"`` sends part of a body and hangs
    up) and records each requested path in ``requests`` (conftest's ``server`` fixture)."""

    files: dict = {}
    requests: list = []

    def do_GET(self):  # noqa: N802
        self.requests.append(self.path)
        data = self.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        if data == "drop":                       # announce a body, send half, hang up
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"\0" * 1000)
            self.wfile.flush()
            self.connection.close()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def check_pooling_against_loops(kernels, backend, host_rng, kind, case, mode):
    """``kernels``' ``{kind}_pool2d_forward`` / ``_backward`` (kind max, min or avg) on
    ``backend`` equal the naive loops on one :data:`POOL_CASES` geometry, in training (with
    the backward through its cache) and in inference."""
    from portacnn import reference

    shape, k, s, p = case
    x = host_rng.normal(size=shape)
    fwd = getattr(kernels, f"{kind}_pool2d_forward")
    bwd = getattr(kernels, f"{kind}_pool2d_backward")
    ref_fwd = getattr(reference, f"{kind}_pool2d")
    ref_bwd = getattr(reference, f"{kind}_pool2d_backward")
    y, cache = fwd(backend.asarray(x), k, s, p, mode)
    y_ref = ref_fwd(x, k, s, p, mode)
    assert_close(y, y_ref)
    fast, nothing = fwd(backend.asarray(x), k, s, p, mode, inference=True)
    assert nothing is None
    assert_close(fast, y_ref)
    dy = host_rng.normal(size=y_ref.shape)
    assert_close(bwd(backend.asarray(dy), cache), ref_bwd(dy, x, k, s, p, mode))
