"""CIFAR-10 (Krizhevsky, 2009): 60,000 32x32 colour photographs of ten classes, read from the
*binary version* of the data set (``cifar-10-binary.tar.gz``, never the pickled Python one).

The tarball holds ``cifar-10-batches-bin/`` with ``data_batch_1.bin`` ... ``data_batch_5.bin``
(training, 10,000 images each) and ``test_batch.bin``. Each file is a run of 3,073-byte
records: one label byte (0-9), then 3,072 pixel bytes, the 1,024 red values of the 32x32 image
row by row, then the green, then the blue: channels first, as a model takes them.

:func:`load_cifar10` returns host NumPy arrays ``(x_train, y_train), (x_test, y_test)`` with
images uint8 ``(N, 3, 32, 32)`` and labels uint8 ``(N,)``, like the MNIST loaders;
``normalize(x, CIFAR10_MEAN, CIFAR10_STD)`` turns them into floats.
"""

from __future__ import annotations

import tarfile
import zlib
from pathlib import Path

import numpy as np

from .download import DataError, default_cache_dir, fetch

__all__ = ["load_cifar10", "download_cifar10", "read_cifar10_batch", "CIFAR10_FILES",
           "CIFAR10_MIRRORS", "CIFAR10_MEAN", "CIFAR10_STD", "CIFAR10_CLASSES"]

ARCHIVE = "cifar-10-binary.tar.gz"
FOLDER = "cifar-10-batches-bin"
# The authors publish an MD5 (c32a1d4ab5d03f1284b67883e8d87530); this SHA-256 of the same
# tarball is the one TensorFlow Datasets records.
CIFAR10_FILES = {ARCHIVE: "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd"}
CIFAR10_MIRRORS = ("https://www.cs.toronto.edu/~kriz/",)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)     # per channel (R, G, B), of the training images
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")
TRAIN_BATCHES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_BATCH = "test_batch.bin"
RECORD = 1 + 3 * 32 * 32
_REFETCH = "delete it and download it again (--download)"


def read_cifar10_batch(data: bytes, name: str = "<bytes>"):
    """Decode one binary batch file: ``(images uint8 (N, 3, 32, 32), labels uint8 (N,))``.

    Raises:
        DataError: the size is not a whole number of 3,073-byte records, or a label is not 0-9
            (the message names ``name``: a truncated file, or another data set's).
    """
    if not data or len(data) % RECORD:
        raise DataError(f"{name} holds {len(data)} bytes, not a whole number of {RECORD}-byte "
                        "CIFAR-10 records (1 label byte + 3,072 pixel bytes): the file is "
                        f"truncated or not from {ARCHIVE}; {_REFETCH}")
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, RECORD)
    labels = records[:, 0].copy()
    if labels.max() > 9:
        bad = int(np.argmax(labels > 9))
        raise DataError(f"{name}: record {bad} has label {labels[bad]}, not 0-9: not a CIFAR-10 "
                        f"batch (CIFAR-100's records have two label bytes); {_REFETCH}")
    return records[:, 1:].reshape(-1, 3, 32, 32).copy(), labels


def load_cifar10(path=None, *, download: bool = False, cache_dir=None):
    """Load CIFAR-10: uint8 images (N, 3, 32, 32), labels (N,) in 0-9 (:data:`CIFAR10_CLASSES`);
    50,000 training and 10,000 test images.

    Args:
        path: ``cifar-10-binary.tar.gz`` itself, or a directory holding it, or holding the six
            ``.bin`` files (extracted, or in ``cifar-10-batches-bin/``). ``None``:
            ``cache_dir``, where :func:`download_cifar10` puts the tarball. It is read without
            extracting it.
        download: fetch the tarball first (once; 163 MiB; needs ``portacnn[data]``) into
            ``path``, or ``cache_dir`` when ``path`` is None.
        cache_dir: the download folder when ``path`` is None (default
            ``$PORTACNN_DATA/cifar10`` or ``~/.cache/portacnn/cifar10``).

    Raises:
        DataError: nothing of CIFAR-10's binary version at ``path``, or a file damaged,
            truncated or of the wrong size (the message names the file and the fix).
    """
    if download:
        path = download_cifar10(cache_dir if path is None else path)
    elif path is None:
        path = default_cache_dir() / "cifar10" if cache_dir is None else cache_dir
    path = Path(path)
    if path.is_file():
        files = _from_archive(path)
    elif (path / ARCHIVE).is_file():
        files = _from_archive(path / ARCHIVE)
    else:
        files = _from_folder(path / FOLDER if (path / FOLDER).is_dir() else path)
    train = [read_cifar10_batch(data, name) for name, data in files[:-1]]
    name, data = files[-1]
    return ((np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train])),
            read_cifar10_batch(data, name))


def _from_folder(folder: Path) -> list:
    """``[(path, bytes)]`` of the five training batches and the test batch in ``folder``."""
    names = (*TRAIN_BATCHES, TEST_BATCH)
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        found = "no such directory" if not folder.is_dir() else f"no {', '.join(missing)} there"
        python = (folder / "data_batch_1").is_file() or (folder / "cifar-10-batches-py").is_dir()
        pickled = (" (it holds the pickled Python version, which portacnn does not read)"
                   if python else "")
        raise DataError(f"CIFAR-10 not found in {folder}: {found}{pickled}. Give {ARCHIVE} or "
                        f"a directory holding it or its {FOLDER} files, or add --download to "
                        "fetch it there (download=True in Python)")
    return [(str(folder / name), (folder / name).read_bytes()) for name in names]


def _from_archive(archive: Path) -> list:
    """``[(member path, bytes)]`` of the six batches, read from the tarball in memory."""
    wanted = {f"{FOLDER}/{name}": name for name in (*TRAIN_BATCHES, TEST_BATCH)}
    found = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                name = wanted.get(member.name.removeprefix("./"))
                if name is not None and member.isfile():
                    found[name] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise DataError(f"{archive} is a damaged or truncated tar.gz ({exc}); {_REFETCH}") from None
    missing = [name for name in wanted.values() if name not in found]
    if missing:
        raise DataError(f"{archive} has no {', '.join(f'{FOLDER}/{m}' for m in missing)}: it is "
                        f"not CIFAR-10's binary version {ARCHIVE} (cifar-10-python.tar.gz is "
                        f"the pickled one, which portacnn does not read); {_REFETCH}")
    return [(f"{archive}:{FOLDER}/{name}", found[name]) for name in (*TRAIN_BATCHES, TEST_BATCH)]


def download_cifar10(directory=None, *, mirrors=CIFAR10_MIRRORS, files=None,
                     progress: bool = True, timeout: float = 30.0) -> Path:
    """Download ``cifar-10-binary.tar.gz`` into ``directory`` (once; default
    ``default_cache_dir() / "cifar10"``), checked against its SHA-256, and return the
    directory, which :func:`load_cifar10` reads.

    Raises:
        DataError: pooch is missing, the mirror could not be reached, or it served a file with
            another hash (see :func:`~.download.fetch`).
    """
    return fetch(dict(CIFAR10_FILES if files is None else files), mirrors,
                 default_cache_dir() / "cifar10" if directory is None else directory,
                 title="CIFAR-10", progress=progress, timeout=timeout,
                 offline_hint="put it in a directory and pass that with --dataset cifar10 "
                              "--data DIR (load_cifar10(DIR) in Python)")
