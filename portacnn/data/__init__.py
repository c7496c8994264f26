"""Data: MNIST loaders (bundled sample, IDX directory, verified download), normalisation and
batching. Host-side NumPy only: a model moves each batch to its device."""

from .idx import IdxError, parse_idx, read_idx
from .mnist import (MEAN, MNIST_FILES, MNIST_MIRRORS, STD, DataError, batches, default_cache_dir,
                    download_mnist, load_mnist, load_sample, normalize)

__all__ = ["IdxError", "DataError", "read_idx", "parse_idx", "load_mnist", "load_sample",
           "download_mnist", "normalize", "batches", "default_cache_dir", "MNIST_FILES",
           "MNIST_MIRRORS", "MEAN", "STD"]
