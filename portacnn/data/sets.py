"""The data sets by name, with what a caller needs to use any of them alike: ``--dataset``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .cifar10 import CIFAR10_MEAN, CIFAR10_STD, download_cifar10, load_cifar10
from .mnist import (FASHION_MNIST_MEAN, FASHION_MNIST_STD, MEAN, STD, download_fashion_mnist,
                    download_mnist, load_fashion_mnist, load_mnist)

__all__ = ["DataSet", "DATASETS"]


@dataclass(frozen=True)
class DataSet:
    """A data set's loader and downloader and the facts about its images.

    ``load(path=None, *, download=False)`` returns uint8 ``(x_train, y_train), (x_test,
    y_test)``; ``download(directory=None, *, progress=True)`` fetches its files into
    ``directory`` (default: its folder in the cache) and returns that directory. ``shape`` is
    one image's (C, H, W) once normalised; ``mean`` and ``std`` are what
    :func:`~.preprocess.normalize` takes for it.
    """

    title: str
    load: Callable
    download: Callable
    shape: tuple
    mean: float | tuple
    std: float | tuple
    cache_folder: str


DATASETS = {
    "mnist": DataSet("MNIST", load_mnist, download_mnist, (1, 28, 28), MEAN, STD, "mnist"),
    "fashion-mnist": DataSet("Fashion-MNIST", load_fashion_mnist, download_fashion_mnist,
                             (1, 28, 28), FASHION_MNIST_MEAN, FASHION_MNIST_STD, "fashion-mnist"),
    "cifar10": DataSet("CIFAR-10", load_cifar10, download_cifar10, (3, 32, 32), CIFAR10_MEAN,
                       CIFAR10_STD, "cifar10"),
}
