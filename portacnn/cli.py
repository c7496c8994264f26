"""Command line: ``python -m portacnn train`` (also ``scripts/train.py``).

Under ``mpiexec -n N`` the same command trains data-parallel (:mod:`portacnn.distributed`): each
process computes its shard of every batch, rank 0 prints and writes, and a failure on any
process ends the job with a non-zero status.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import math
import os
import sys
import time
import warnings
from pathlib import Path

__all__ = ["main", "train_parser"]


class _Parser(argparse.ArgumentParser):
    def error(self, message):          # one clear line and status 2, not usage + traceback
        self.exit(2, f"{self.prog}: error: {message}\n")


def _integer(minimum: int):
    """An argparse type: an integer >= ``minimum``."""
    what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {what}, got {value}")
        return value

    return parse


_positive_int = _integer(1)


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be positive and finite, got {value}")
    return value


def _version() -> str:
    """``portacnn X.Y.Z``: the installed distribution's version (``portacnn.__version__``)."""
    try:
        return f"portacnn {importlib.metadata.version('portacnn')}"
    except importlib.metadata.PackageNotFoundError:
        return "portacnn (version unknown: not installed; pip install . records it)"


def train_parser(prog="portacnn train") -> argparse.ArgumentParser:
    """The options of ``train``; each help text ends with the option's default."""
    p = _Parser(prog=prog, description="Train LeNet-5 on MNIST (the bundled sample by default).")
    p.add_argument("--version", action="version", version=_version())
    p.add_argument("--device", default=None,
                   help="cpu (NumPy) or gpu / cuda:N (CuPy) (default: $PORTACNN_DEVICE or cpu)")
    p.add_argument("--model", default="lenet5", choices=["lenet5", "lenet5-relu", "lenet5-bn"],
                   help="lenet5: tanh + average pooling; lenet5-relu: ReLU + max pooling; "
                        "lenet5-bn: lenet5-relu with batch normalisation (default: %(default)s)")
    p.add_argument("--epochs", type=_positive_int, default=10,
                   help="passes over the training images (default: %(default)s)")
    p.add_argument("--batch-size", type=_positive_int, default=32,
                   help="images per update (default: %(default)s)")
    p.add_argument("--lr", type=_positive_float, default=None,
                   help="learning rate (default: 0.02 for sgd, 0.003 for adam, 0.001 for "
                        "rmsprop)")
    p.add_argument("--optimizer", default="sgd", choices=["sgd", "adam", "rmsprop"],
                   help="sgd uses momentum 0.9 (default: %(default)s)")
    p.add_argument("--data", default=None, type=Path, metavar="DIR",
                   help="a directory of MNIST IDX files (default: the bundled 4,000/1,000 sample)")
    p.add_argument("--download", action="store_true",
                   help="download full MNIST into --data DIR (default $PORTACNN_DATA/mnist or "
                        "~/.cache/portacnn/mnist; needs portacnn[data]); later runs read it with "
                        "--data DIR")
    p.add_argument("--seed", type=_integer(0), default=0,
                   help="seed of the initial weights and the shuffling (default: %(default)s)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"],
                   help="precision of the weights and the computation (default: %(default)s)")
    p.add_argument("--save", default=None, type=Path, metavar="PATH",
                   help="write the trained model here, a .safetensors file (default: not saved)")
    p.add_argument("--plots", default=None, type=Path, metavar="DIR",
                   help="write history, filters, feature_maps, predictions and confusion PNGs "
                        "to DIR after training (needs portacnn[viz]) (default: no pictures)")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="BLAS (and PyTorch) threads, capped at the machine's cores; without "
                        "it, the cores the 1-minute load average leaves idle (at least 1), and 1 "
                        "a process under mpiexec (default: idle cores)")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bar: one line per epoch, as in a log")
    return p


DEFAULT_LR = {"sgd": 0.02, "adam": 3e-3, "rmsprop": 1e-3}


def _threads(requested: int) -> int:
    cores = os.cpu_count() or 1
    if requested > cores:
        print(f"warning: --threads {requested} is more than this machine's {cores} core(s); "
              f"using {cores}", file=sys.stderr)
        return cores
    return requested


def output_problem(args) -> str | None:
    """The first problem with an output path or the data directory, found before any work
    starts (so a long training run never ends in a traceback), or None. Folders are checked by
    creating a file in them (:func:`portacnn.checkpoint.folder_problem`), which is right for
    root too, and existing outputs must be regular files: a FIFO or a device is never
    replaced."""
    from .checkpoint import folder_problem, target_problem

    if args.save is not None:
        if args.save.is_dir():
            return (f"--save {args.save} is a directory: give a file name such as "
                    f"{args.save / 'lenet5.safetensors'}")
        problem = target_problem(args.save) or folder_problem(args.save.parent)
        if problem:
            return f"--save {args.save}: {problem}"
    if args.plots is not None:
        if args.plots.exists() and not args.plots.is_dir():
            return (f"--plots {args.plots} is a file: --plots takes a directory for the five "
                    "PNGs (created if missing)")
        problem = folder_problem(args.plots)
        for name in PLOTS:
            problem = problem or target_problem(args.plots / f"{name}.png", example=None)
        if problem:
            return f"--plots {args.plots}: {problem}"
    if args.download and args.data is not None:
        if args.data.exists() and not args.data.is_dir():
            return f"--data {args.data} is a file: give the directory to download MNIST into"
        problem = folder_problem(args.data)
        if problem:
            return f"--data {args.data}: {problem}"
    return None


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {message}", file=sys.stderr)


def train(args) -> int:
    from . import data, distributed, models, optim
    from .allocator import keep_freed_memory
    from .backends import get_backend
    from .threads import default_threads

    parallel = distributed.launched_by_mpi()        # mpiexec -n N: data parallel over N processes
    if parallel:
        distributed.abort_on_error()
        distributed.silence_unless_root()
        distributed.interrupt_on_sigterm()          # how mpiexec passes a Ctrl-C on
    backend = distributed.rank_device(args.device) if parallel else get_backend(args.device)
    threads = (_threads(args.threads) if args.threads is not None
               else 1 if parallel else default_threads())
    keep_freed_memory()           # freed buffers are reused, not page-faulted in anew each step
    if args.plots is not None:
        try:
            import matplotlib  # noqa: F401  (checked before training, not after)
        except ImportError:
            raise PlotError('--plots needs matplotlib: pip install "portacnn[viz]"') from None
    if args.data is not None and not args.download and not args.data.is_dir():
        raise data.DataError(f"--data {args.data}: no such directory (add --download to fetch "
                             "MNIST there)")
    directory = args.data
    if args.download:
        def download():
            return data.download_mnist(args.data, progress=sys.stderr.isatty())
        # under mpiexec rank 0 downloads; the others then find the files in place
        directory = distributed.root_first(download) if parallel else download()
    (x_train, y_train), (x_test, y_test) = data.load_mnist(directory)
    source = "bundled MNIST sample" if directory is None else f"MNIST in {directory}"
    print(f"device: {args.device or 'default'} -> backend {backend.description}")
    print(f"data: {source}, {len(x_train):,} training / {len(x_test):,} test images")
    model = models.MODELS[args.model](device=backend, dtype=args.dtype, seed=args.seed)
    model.summary()
    runner = distributed.DataParallel(model) if parallel else model
    if parallel:
        print(f"data parallel: {runner.size} processes (MPI), each computing 1/{runner.size} of "
              f"every batch")
    lr = args.lr or DEFAULT_LR[args.optimizer]
    opt = optim.SGD(lr, momentum=0.9) if args.optimizer == "sgd" else optim.get_optimizer(
        args.optimizer, lr=lr)
    print(f"optimizer: {opt}, batch size {args.batch_size}, {args.epochs} epochs, {args.dtype}")
    x_train, x_test = data.normalize(x_train, dtype=args.dtype), data.normalize(x_test, dtype=args.dtype)
    t0 = time.perf_counter()
    with backend.limit_threads(threads):
        print(f"threads: {backend.thread_info()}")
        history = runner.fit(x_train, y_train, epochs=args.epochs, batch_size=args.batch_size,
                             optimizer=opt, validation_data=(x_test, y_test), seed=args.seed,
                             verbose=2 if args.quiet else 1)
        total = time.perf_counter() - t0
        loss, acc = runner.evaluate(x_test, y_test)
    train_s = sum(history["seconds"])
    print(f"test accuracy {acc:.4f} (loss {loss:.4f}) on {len(x_test):,} held-out images; "
          f"training {train_s:.1f} s ({total:.1f} s with validation)")
    if args.save is not None:
        runner.save(args.save)
        print(f"saved {args.save}")
    if args.plots is not None and (not parallel or runner.is_root):
        write_plots(args.plots, model, history, x_test, y_test)
    return 0


class PlotError(RuntimeError):
    """--plots was asked for but cannot be drawn."""


PLOTS = ("history", "filters", "feature_maps", "predictions", "confusion")


def write_plots(directory: Path, model, history, x_test, y_test) -> None:
    """The five PNGs of ``--plots``: curves, first-layer filters, feature maps of the first
    test digit, predictions on the first 25 test digits, and the test confusion matrix."""
    from . import viz

    directory.mkdir(parents=True, exist_ok=True)
    viz.plot_history(history, directory / "history.png")
    viz.plot_filters(model, path=directory / "filters.png")
    viz.plot_feature_maps(model, x_test[0], path=directory / "feature_maps.png")
    viz.plot_predictions(model, x_test, y_test, n=25, path=directory / "predictions.png")
    viz.plot_confusion(model, x_test, y_test, path=directory / "confusion.png")
    print(f"plots: {', '.join(f'{directory / name}.png' for name in PLOTS)}")


def main(argv=None) -> int:
    """Entry point of ``python -m portacnn`` and the ``portacnn`` command."""
    from .checkpoint import CheckpointError
    from .data import DataError, IdxError
    from .backends import DeviceError
    from .distributed import DistributedError

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["--version"], ["-V"]):
        print(_version())
        return 0
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m portacnn train [options]   (python -m portacnn train --help)\n"
              "       python -m portacnn --version")
        return 0 if argv else 2
    if argv[0] != "train":
        print(f"portacnn: error: unknown command {argv[0]!r}; the command is 'train'",
              file=sys.stderr)
        return 2
    parser = train_parser()
    args = parser.parse_args(argv[1:])
    problem = output_problem(args)
    if problem:
        print(f"{parser.prog}: error: {problem}", file=sys.stderr)
        return 2
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning          # "warning: ...", one line
            return train(args)
    except (DeviceError, DataError, IdxError, CheckpointError, FileNotFoundError,
            PlotError, FloatingPointError, DistributedError) as exc:
        return _fail(f"{parser.prog}: error: {exc}", 2, exc)
    except KeyboardInterrupt as exc:
        return _fail("interrupted", 130, exc)


def _fail(message: str, status: int, error: BaseException) -> int:
    """Report ``error`` as ``message`` on standard error and return the exit status. Under
    mpiexec the job ends together: rank 0 prints the message once, whether every process
    failed alike or one failed and the others stopped for it (``distributed.end_together``;
    the other processes exit with 0, rank 0 last with ``status``)."""
    from .distributed import end_together, launched_by_mpi

    if not launched_by_mpi():
        print(message, file=sys.stderr)
        return status
    return end_together(message, status, error)
