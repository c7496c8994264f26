"""``portacnn train`` once its options are parsed: the data, the model, the optimizer and the
training habits they name, then fit, evaluate, save and plot."""

from __future__ import annotations

import os
import sys
import time

from ..models import MODELS
from .options import _title

__all__ = ["train", "PlotError", "DEFAULT_LR"]


def _habits(args) -> tuple[dict, dict]:
    """The optimizer's and ``fit``'s extra arguments for the training-habit options: the
    clipping, and the callbacks with the validation they watch."""
    from .. import callbacks, schedules

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


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {message}", file=sys.stderr)


def train(args) -> int:
    from .. import data, distributed, optim, training
    from ..allocator import keep_freed_memory
    from ..backends import DeviceError, get_backend
    from ..threads import default_threads

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
        from ..viz import plot_report

        written = plot_report(args.plots, model, history, x_test, y_test)
        print(f"plots: {', '.join(str(path) for path in written)}")
    return 0


class PlotError(RuntimeError):
    """--plots was asked for but cannot be drawn."""
