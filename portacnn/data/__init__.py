"""Data: MNIST, Fashion-MNIST and CIFAR-10 loaders (the bundled MNIST sample, a directory of
files, a verified download into the cache), normalisation and batching. Host-side NumPy only:
a model moves each batch to its device.

- :mod:`.idx`: the IDX format of the MNIST and Fashion-MNIST files;
- :mod:`.mnist`: MNIST (with the bundled sample) and Fashion-MNIST;
- :mod:`.cifar10`: CIFAR-10's binary version;
- :mod:`.download`: the cache and verified downloads;
- :mod:`.preprocess`: ``normalize`` and ``batches``;
- :mod:`.sets`: the data sets by name (``DATASETS``), as ``--dataset`` selects them.
"""

from .cifar10 import (CIFAR10_CLASSES, CIFAR10_FILES, CIFAR10_MEAN, CIFAR10_MIRRORS, CIFAR10_STD,
                      download_cifar10, load_cifar10, read_cifar10_batch)
from .download import DataError, default_cache_dir
from .idx import IdxError, parse_idx, read_idx
from .mnist import (FASHION_MNIST_FILES, FASHION_MNIST_MEAN, FASHION_MNIST_MIRRORS,
                    FASHION_MNIST_STD, MEAN, MNIST_FILES, MNIST_MIRRORS, STD,
                    download_fashion_mnist, download_mnist, load_fashion_mnist, load_mnist,
                    load_sample)
from .preprocess import batches, normalize
from .sets import DATASETS, DataSet

__all__ = ["IdxError", "DataError", "read_idx", "parse_idx", "load_mnist", "load_sample",
           "download_mnist", "load_fashion_mnist", "download_fashion_mnist", "load_cifar10",
           "download_cifar10", "read_cifar10_batch", "normalize", "batches", "default_cache_dir",
           "DATASETS", "DataSet", "MNIST_FILES", "MNIST_MIRRORS", "MEAN", "STD",
           "FASHION_MNIST_FILES", "FASHION_MNIST_MIRRORS", "FASHION_MNIST_MEAN",
           "FASHION_MNIST_STD", "CIFAR10_FILES", "CIFAR10_MIRRORS", "CIFAR10_MEAN", "CIFAR10_STD",
           "CIFAR10_CLASSES"]
