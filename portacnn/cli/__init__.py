"""Command line: ``python -m portacnn train`` (also ``scripts/train.py``).

Under ``mpiexec -n N`` the same command trains data-parallel (:mod:`portacnn.distributed`): each
process computes its shard of every batch, rank 0 prints and writes, and a failure on any
process ends the job with a non-zero status.
"""

from __future__ import annotations

import sys
import warnings

from .options import _version, output_problem, train_parser
from .run import PlotError, _show_warning, train

__all__ = ["main", "train_parser"]


def main(argv=None) -> int:
    """Entry point of ``python -m portacnn`` and the ``portacnn`` command."""
    from ..checkpoint import CheckpointError
    from ..data import DataError, IdxError
    from ..backends import DeviceError
    from ..distributed import DistributedError

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
    from ..distributed import end_together, launched_by_mpi

    if not launched_by_mpi():
        print(message, file=sys.stderr)
        return status
    return end_together(message, status, error)
