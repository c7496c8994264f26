"""Command line: ``python -m portacnn train`` (also ``scripts/train.py``).

Under ``mpiexec -n N`` the same command trains data-parallel (:mod:`portacnn.distributed`): each
process computes its shard of every batch, rank 0 prints and writes, and a failure on any
process ends the job with a non-zero status.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import math
import os
import sys
import time
import warnings
from pathlib import Path

from .models import MODELS
from .viz import REPORT_PLOTS

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
    from .data import DATASETS

    p = _Parser(prog=prog, description="Train a network (LeNet-5 by default) on MNIST (the "
                                       "bundled sample by default), Fashion-MNIST or CIFAR-10.")
    p.add_argument("--version", action="version", version=_version())
    p.add_argument("--device", default=None,
                   help="cpu (NumPy) or gpu / cuda:N (CuPy) (default: $PORTACNN_DEVICE or cpu)")
    p.add_argument("--model", default="lenet5", choices=list(MODELS),
                   help="lenet5: tanh + average pooling; lenet5-relu: ReLU + max pooling; "
                        "lenet5-bn: lenet5-relu with batch normalisation; small_vgg: four 3x3 "
                        "convolutions, two max poolings, one dense layer (default: %(default)s)")
    p.add_argument("--epochs", type=_positive_int, default=10,
                   help="passes over the training images (default: %(default)s)")
    p.add_argument("--batch-size", type=_positive_int, default=32,
                   help="images per update (default: %(default)s)")
    p.add_argument("--lr", type=_positive_float, default=None,
                   help="learning rate (default: 0.02 for sgd, 0.003 for adam, 0.001 for "
                        "rmsprop)")
    p.add_argument("--optimizer", default="sgd", choices=["sgd", "adam", "rmsprop"],
                   help="sgd uses momentum 0.9 (default: %(default)s)")
    p.add_argument("--dataset", default="mnist", choices=list(DATASETS),
                   help="what to train on; the model takes its image shape (default: "
                        "%(default)s)")
    p.add_argument("--data", default=None, type=Path, metavar="DIR",
                   help="a directory of the data set's files: MNIST's IDX files, CIFAR-10's "
                        "binary version (default: the bundled 4,000/1,000 MNIST sample; the "
                        "download cache for the others)")
    p.add_argument("--download", action="store_true",
                   help="download the full data set into --data DIR (default $PORTACNN_DATA/NAME "
                        "or ~/.cache/portacnn/NAME; needs portacnn[data]); later runs read it "
                        "with --data DIR")
    p.add_argument("--augment", action="store_true",
                   help="random crop (zero padding 4) and horizontal flip of every training "
                        "batch, the CIFAR standard (default: off)")
    p.add_argument("--seed", type=_integer(0), default=0,
                   help="seed of the initial weights and the shuffling (default: %(default)s)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"],
                   help="precision of the weights and the computation (default: %(default)s)")
    p.add_argument("--save", default=None, type=Path, metavar="PATH",
                   help="write the trained model here, a .safetensors file (default: not saved)")
    p.add_argument("--export", default=None, type=Path, metavar="PATH",
                   help="write the trained model's inference as an ONNX file here, for any ONNX "
                        "runtime (needs portacnn[onnx]) (default: not exported)")
    p.add_argument("--plots", default=None, type=Path, metavar="DIR",
                   help="write history, filters, feature_maps, predictions and confusion PNGs "
                        "to DIR after training (needs portacnn[viz]) (default: no pictures)")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="BLAS (and PyTorch) threads, capped at the machine's cores; without "
                        "it, the cores the 1-minute load average leaves idle (at least 1), and 1 "
                        "a process under mpiexec (default: idle cores)")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bar: one line per epoch, as in a log")
    p.add_argument("--compile", action="store_true",
                   help="with --device jax: trace each training step into one program with "
                        "jax.jit, and the test forward too (default: eager)")
    # training habits: the rate's schedule, clipping, early stopping, the best checkpoint
    p.add_argument("--schedule", default="constant", choices=["constant", "step", "cosine"],
                   help="the learning rate over the epochs: step divides it by 10 after each "
                        "third, cosine anneals it towards 0 (default: %(default)s)")
    p.add_argument("--warmup", type=_integer(0), default=0, metavar="EPOCHS",
                   help="epochs of linear warm-up before the schedule (default: %(default)s)")
    p.add_argument("--clipnorm", type=_positive_float, default=None, metavar="X",
                   help="clip the gradients to global norm X (default: no clipping)")
    p.add_argument("--early-stopping", type=_integer(0), default=None, metavar="PATIENCE",
                   help="stop when val_loss has not improved for PATIENCE epochs and keep the "
                        "best epoch's weights (default: train every epoch)")
    p.add_argument("--save-best", action="store_true",
                   help="write --save after each epoch with the best val_loss so far, not at "
                        "the end. With this or --early-stopping, val_loss is measured on 10%% "
                        "of the training images, held out (default: on the test images)")
    return p


def _habits(args) -> tuple[dict, dict]:
    """The optimizer's and ``fit``'s extra arguments for the training-habit options: the
    clipping, and the callbacks with the validation they watch."""
    from . import callbacks, schedules

    lr = args.lr or DEFAULT_LR[args.optimizer]
    decaying = args.epochs - args.warmup
    schedule = {"constant": None, "step": schedules.step_decay(lr, every=-(-decaying // 3)),
                "cosine": schedules.cosine_decay(lr, epochs=decaying)}[args.schedule]
    if args.warmup:
        schedule = schedules.warmup(lr if schedule is None else schedule, args.warmup)
    chosen = [] if schedule is None else [callbacks.LearningRateScheduler(schedule)]
    if args.early_stopping is not None:
        chosen.append(callbacks.EarlyStopping(patience=args.early_stopping, verbose=1,
                                              restore_best_weights=True))
    if args.save_best:
        chosen.append(callbacks.ModelCheckpoint(args.save, save_best_only=True, verbose=1))
    fit = {"callbacks": chosen}
    if args.save_best or args.early_stopping is not None:
        fit["validation_split"] = 0.1
    return {"global_clipnorm": args.clipnorm}, fit


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
        for name in REPORT_PLOTS:
            problem = problem or target_problem(args.plots / f"{name}.png", example=None)
        if problem:
            return f"--plots {args.plots}: {problem}"
    if args.export is not None:
        problem = ('needs ndonnx: pip install "portacnn[onnx]"'
                   if importlib.util.find_spec("ndonnx") is None else
                   target_problem(args.export) or folder_problem(args.export.parent))
        if problem:
            return f"--export {args.export}: {problem}"
    if args.save_best and args.save is None:
        return "--save-best writes the file of --save: add --save PATH"
    if args.warmup >= args.epochs and args.schedule != "constant":
        return (f"--warmup {args.warmup} leaves no epoch of --epochs {args.epochs} for the "
                f"{args.schedule} schedule: warm up for fewer epochs")
    if args.download and args.data is not None:
        if args.data.exists() and not args.data.is_dir():
            return (f"--data {args.data} is a file: give the directory to download "
                    f"{_title(args)} into")
        problem = folder_problem(args.data)
        if problem:
            return f"--data {args.data}: {problem}"
    return None


def _title(args) -> str:
    from .data import DATASETS

    return DATASETS[args.dataset].title


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {message}", file=sys.stderr)


def train(args) -> int:
    from . import data, distributed, optim, training
    from .allocator import keep_freed_memory
    from .backends import DeviceError, get_backend
    from .threads import default_threads

    parallel = distributed.launched_by_mpi()        # mpiexec -n N: data parallel over N processes
    if parallel:
        distributed.abort_on_error()
        distributed.silence_unless_root()
        distributed.interrupt_on_sigterm()          # how mpiexec passes a Ctrl-C on
    backend = distributed.rank_device(args.device) if parallel else get_backend(args.device)
    if args.compile and (backend.jit is None or parallel):
        raise DeviceError(f"--compile traces each step with jax.jit, in one process: run it "
                          f"with --device jax (not {backend.name}) and without mpiexec")
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
                             f"{_title(args)} there)")
    dataset, directory = data.DATASETS[args.dataset], args.data
    if args.download:
        def download():
            return dataset.download(args.data, progress=sys.stderr.isatty())
        # under mpiexec rank 0 downloads; the others then find the files in place
        directory = distributed.root_first(download) if parallel else download()
    (x_train, y_train), (x_test, y_test) = dataset.load(directory)
    source = ("bundled MNIST sample" if directory is None and args.dataset == "mnist" else
              f"{dataset.title} in {directory or data.default_cache_dir() / dataset.cache_folder}")
    asked = args.device or (f"$PORTACNN_DEVICE={os.environ['PORTACNN_DEVICE']}"
                            if os.environ.get("PORTACNN_DEVICE") else "default")
    print(f"device: {asked} -> backend {backend.description}")
    print(f"data: {source}, {len(x_train):,} training / {len(x_test):,} test images")
    model = MODELS[args.model](input_shape=dataset.shape, device=backend, dtype=args.dtype,
                               seed=args.seed)
    model.summary()
    runner = distributed.DataParallel(model) if parallel else model
    if parallel:
        print(f"data parallel: {runner.size} processes (MPI), each computing 1/{runner.size} of "
              f"every batch")
    lr = args.lr or DEFAULT_LR[args.optimizer]
    clipping, habits = _habits(args)
    opt = (optim.SGD(lr, momentum=0.9, **clipping) if args.optimizer == "sgd"
           else optim.get_optimizer(args.optimizer, lr=lr, **clipping))
    print(f"optimizer: {opt}, batch size {args.batch_size}, {args.epochs} epochs, {args.dtype}"
          + (f", {args.schedule} schedule" if args.schedule != "constant" else "")
          + (f" after {args.warmup} warm-up epochs" if args.warmup else ""))
    x_train, x_test = (data.normalize(x, dataset.mean, dataset.std, dtype=args.dtype)
                       for x in (x_train, x_test))
    augment = training.RandomCropFlip() if args.augment else None
    if augment is not None:
        print(f"augmentation: {augment} of every training batch")
    validation = {} if "validation_split" in habits else {"validation_data": (x_test, y_test)}
    if not validation:
        print("validation: the last 10% of the training images, held out (what "
              "--early-stopping and --save-best watch)")
    compiled = {"compile": True} if args.compile else {}
    t0 = time.perf_counter()
    with backend.limit_threads(threads):
        print(f"threads: {backend.thread_info()}")
        history = runner.fit(x_train, y_train, epochs=args.epochs, batch_size=args.batch_size,
                             optimizer=opt, seed=args.seed, verbose=2 if args.quiet else 1,
                             augment=augment, threads=threads, **validation, **habits,
                             **compiled)
        total = time.perf_counter() - t0
        loss, acc = runner.evaluate(x_test, y_test, **compiled)
    train_s = sum(history["seconds"])
    print(f"test accuracy {acc:.4f} (loss {loss:.4f}) on {len(x_test):,} held-out images; "
          f"training {train_s:.1f} s ({total:.1f} s with validation)")
    if args.save is not None and not args.save_best:
        runner.save(args.save)
        print(f"saved {args.save}")
    if args.export is not None and (not parallel or runner.is_root):
        print(f"exported {model.export_onnx(args.export)} (ONNX)")
    if args.plots is not None and (not parallel or runner.is_root):
        from .viz import plot_report

        written = plot_report(args.plots, model, history, x_test, y_test)
        print(f"plots: {', '.join(str(path) for path in written)}")
    return 0


class PlotError(RuntimeError):
    """--plots was asked for but cannot be drawn."""


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
