"""The options of ``portacnn train``: the parser, its argument types, and the checks of
output paths made before any work starts."""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import math
from pathlib import Path

from ..models import MODELS
from ..viz import REPORT_PLOTS

__all__ = ["train_parser", "output_problem"]


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
    from ..data import DATASETS

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


def output_problem(args) -> str | None:
    """The first problem with an output path or the data directory, found before any work
    starts (so a long training run never ends in a traceback), or None. Folders are checked by
    creating a file in them (:func:`portacnn.checkpoint.folder_problem`), which is right for
    root too, and existing outputs must be regular files: a FIFO or a device is never
    replaced."""
    from ..checkpoint import folder_problem, target_problem

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
    from ..data import DATASETS

    return DATASETS[args.dataset].title
