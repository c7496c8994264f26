"""Helper processes: part of every batch computed by another Python process (NumPy on Linux).

Why processes: NumPy releases the GIL inside its loops and BLAS, but not in the Python between
them. Two threads training the two halves of a LeNet-5 batch (32 images each) spent about a
quarter of their time waiting for the GIL (the 2 CPUs were ~25% idle). Processes do not wait
for each other: in four interleaved runs (2 cores, one BLAS thread per process) a batch-64
step took 6.7-7.6 ms with a helper process, 8.1-10.9 ms with two threads (the helper was
11-31% faster) and 7.2-8.3 ms in PyTorch on 2 threads.

How: a helper is a fresh Python process holding its own copy of the model, rebuilt from
the description checkpoints store (:func:`portacnn.checkpoint.architecture`; so only models
made of built-in layers get helpers). Caller and helper map one block of shared memory (a
``memfd``). For each request the caller writes the current parameters and buffers and the
helper's rows of the batch into the block and sends a short message down a pipe; it computes
its own rows meanwhile, then reads back what the helper wrote into the block: per chunk the
gradients, loss and outputs. The helper runs the same functions on the same chunks with one
BLAS thread, so its results are bit for bit those the caller would have computed.

    caller                                   helper
    write params, x, y;  send "train"  --->  forward/backward each of its chunks,
    forward/backward its own chunks          write grads, loss, outputs;  send "done"
    wait for "done", copy the results  <---

Used by :class:`~portacnn.model.Sequential` when ``backend.workers`` > 1 and
``backend.helper_processes`` is True; ``PORTACNN_HELPER_PROCESSES=0`` turns them off (threads
are used instead).
"""

from __future__ import annotations

import itertools
import math
import mmap
import os
import signal
import subprocess
import sys
import time
import traceback
from multiprocessing.connection import Connection

import numpy as np

__all__ = ["HelperPool", "HelperError", "available"]

_ALIGN = 64                 # every array in the block starts on its own cache line
_STARTUP_TIMEOUT = 120.0    # seconds for a helper to import portacnn and build its model
# Both sides poll for this long before a blocking wait. Requests and replies come every few
# milliseconds during training, and a CPU that went idle in between (on a VM, a halted vCPU)
# comes back late and with cold caches. Polling made LeNet-5's 2-worker step 6% faster in one
# interleaved A/B (12 rounds, 11 faster) and 1-3% in another (10 rounds): small, but it costs
# only the few milliseconds a worker would otherwise sleep.
_SPIN_SECONDS = 0.005
# What a helper process runs (not ``-m``: the module must not run a second time as __main__).
_HELPER_MAIN = "import sys; from portacnn.helpers import _serve; _serve(*map(int, sys.argv[1:]))"


class HelperError(RuntimeError):
    """A helper process failed or died. The message carries its traceback when it has one."""


def available() -> bool:
    """True where helper processes can run: Linux (``memfd``), a known Python executable,
    and not switched off with ``PORTACNN_HELPER_PROCESSES=0``."""
    return (hasattr(os, "memfd_create") and bool(sys.executable)
            and not getattr(sys, "frozen", False)     # a bundled app is not a Python to run
            and os.environ.get("PORTACNN_HELPER_PROCESSES", "1") != "0")


def _poll(conn, seconds: float) -> bool:
    """True once ``conn`` has a message, polling for at most ``seconds`` without sleeping."""
    deadline = time.perf_counter() + seconds
    while not conn.poll():
        if time.perf_counter() > deadline:
            return False
    return True


_layout_ids = itertools.count()


class _Layout:
    """Named arrays packed one after another in a byte block, each aligned to a cache line."""

    def __init__(self, entries: dict | None = None):
        self.id = next(_layout_ids)
        self.entries: dict[str, tuple] = dict(entries or {})
        self.size = 0

    def add(self, name: str, shape, dtype) -> None:
        dtype = np.dtype(dtype)
        offset = -(-self.size // _ALIGN) * _ALIGN
        shape = tuple(int(d) for d in shape)
        self.entries[name] = (offset, shape, dtype.str)
        self.size = offset + math.prod(shape) * dtype.itemsize

    def views(self, block) -> dict:
        return {name: np.ndarray(shape, np.dtype(dtype), buffer=block, offset=offset)
                for name, (offset, shape, dtype) in self.entries.items()}


def _state_items(layers):
    """``(name, store, key)`` of every parameter and buffer, in a fixed order."""
    return [(f"s{i}.{kind}.{key}", store, key)
            for i, layer in enumerate(layers)
            for kind, store in (("p", layer.params), ("b", layer.buffers))
            for key in store]


class _Helper:
    """One helper process and its shared block (caller side)."""

    def __init__(self, arch: dict):
        self._fd = os.memfd_create("portacnn-helper")
        self.size, self._block, self._views = 0, None, {}
        child_reads, parent_writes = os.pipe()
        parent_reads, child_writes = os.pipe()
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-c", _HELPER_MAIN, str(child_reads), str(child_writes),
                 str(self._fd)],
                pass_fds=(child_reads, child_writes, self._fd), stdin=subprocess.DEVNULL,
                env=env)
        except BaseException:
            for fd in (parent_reads, parent_writes, self._fd):
                os.close(fd)
            raise
        finally:
            os.close(child_reads)
            os.close(child_writes)
        self._send = Connection(parent_writes, readable=False)
        self._recv = Connection(parent_reads, writable=False)
        self.pending = False
        self.known_layouts: set = set()      # layout ids the helper has been sent
        self._send.send(("start", arch))
        self.pending = True

    def views(self, layout: _Layout) -> dict:
        """Arrays at ``layout``'s places in the shared block, grown first if it is too small
        (the helper maps it again on its next request, which carries the new size)."""
        if layout.size > self.size:
            size = max(layout.size, 2 * self.size)
            os.ftruncate(self._fd, size)
            # The old mapping is dropped, not closed: arrays viewing it may still be alive.
            self._block, self.size, self._views = mmap.mmap(self._fd, size), size, {}
        views = self._views.get(layout.id)
        if views is None:
            if len(self._views) > 32:
                self._views.clear()
            views = self._views[layout.id] = layout.views(self._block)
        return views

    def send(self, message) -> None:
        if self.pending:
            self.wait()            # an earlier request was abandoned (e.g. Ctrl-C): drain it
        try:
            self._send.send(message)
        except OSError:            # the helper is gone (its end of the pipe is closed)
            self.process.wait()
            raise self._exited() from None
        self.pending = True

    def _exited(self) -> HelperError:
        self.pending = False
        return HelperError(f"portacnn helper process {self.process.pid} exited with code "
                           f"{self.process.returncode}; set PORTACNN_HELPER_PROCESSES=0 to use "
                           "threads instead")

    def wait(self, timeout: float | None = None) -> None:
        """Wait for the reply to the last message; raise :class:`HelperError` if it failed."""
        waited = 0.0
        while not (_poll(self._recv, _SPIN_SECONDS) or self._recv.poll(0.5)):
            waited += 0.5
            if self.process.poll() is not None:
                raise self._exited()
            if timeout is not None and waited >= timeout:
                raise HelperError(f"portacnn helper process {self.process.pid} did not answer "
                                  f"within {timeout:.0f} s")
        try:
            reply = self._recv.recv()
        except EOFError:           # it died while computing: its end of the pipe closed
            self.process.wait()
            raise self._exited() from None
        self.pending = False
        if reply[0] == "error":
            raise HelperError(f"portacnn helper process {self.process.pid} failed:\n{reply[1]}")

    def close(self) -> None:
        for conn in (self._send, self._recv):
            conn.close()               # the helper sees end-of-file and exits
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._fd)


class HelperPool:
    """``count`` helper processes computing shares of a :class:`~portacnn.model.Sequential`'s
    batches on the NumPy backend. Make one per model; :meth:`close` ends the processes
    (they also end when this process exits).

    Each request gives every helper a group of chunks ``[(start, stop), ...]`` of the batch;
    :meth:`collect` returns the per-chunk results in order, as new arrays.
    """

    def __init__(self, model, count: int):
        from .checkpoint import architecture

        if count < 1:
            raise ValueError(f"a helper pool needs at least one helper, got {count}")
        arch = architecture(model)
        self.workers = count + 1
        self.owner = os.getpid()     # a forked copy of the caller must not use these pipes
        self._helpers = []
        try:
            for _ in range(count):
                self._helpers.append(_Helper(arch))
            for helper in self._helpers:       # started together, then each waited for
                helper.wait(timeout=_STARTUP_TIMEOUT)
        except BaseException:
            self.close()
            raise
        self._layouts: dict = {}
        self._active: list = []

    def _layout(self, model, op: str, sizes: tuple, y_like) -> _Layout:
        """Where everything of one request lives in a helper's block: state, the rows ``x``
        (and targets ``y``) of chunks of ``sizes`` rows, and each chunk's results."""
        key = (op, sizes, None if y_like is None else (tuple(y_like.shape[1:]), y_like.dtype))
        lay = self._layouts.get(key)
        if lay is not None:
            return lay
        lay, dtype = _Layout(), model.backend.dtype(model.dtype_name)
        for name, store, k in _state_items(model.layers):
            lay.add(name, store[k].shape, store[k].dtype)
        lay.add("x", (sum(sizes),) + tuple(model.input_shape), dtype)
        if y_like is not None:
            lay.add("y", (sum(sizes),) + tuple(y_like.shape[1:]), y_like.dtype)
        for c, rows in enumerate(sizes):
            lay.add(f"out{c}", (rows,) + tuple(model.output_shape), dtype)
            if op == "train":
                lay.add(f"loss{c}", (), dtype)
                for j, (_, params, key_, _) in enumerate(model.parameters()):
                    lay.add(f"grad{c}.{j}", params[key_].shape, params[key_].dtype)
        if len(self._layouts) > 16:          # e.g. predict() called with many batch sizes
            self._layouts.clear()
        self._layouts[key] = lay
        return lay

    def submit(self, model, op: str, groups, rows, y=None, n: int = 0) -> None:
        """Start ``op`` (``"train"`` or ``"forward"``) on each helper for its group of chunks.

        ``rows(start, stop)`` gives the batch rows ``x[start:stop]`` as host arrays; ``y``
        (training) the targets of the whole batch; ``n`` the batch size the chunk losses are
        weighted by.
        """
        if len(groups) > len(self._helpers):
            raise ValueError(f"{len(groups)} groups for {len(self._helpers)} helpers")
        state = [(name, store[key]) for name, store, key in _state_items(model.layers)]
        self._active = []
        for helper, group in zip(self._helpers, groups):
            sizes = tuple(stop - start for start, stop in group)
            lay = self._layout(model, op, sizes, y)
            views = helper.views(lay)
            for name, value in state:
                views[name][...] = value
            at = 0
            for start, stop in group:
                views["x"][at:at + stop - start, ...] = rows(start, stop)
                if y is not None:
                    views["y"][at:at + stop - start, ...] = y[start:stop, ...]
                at += stop - start
            local = [(sum(sizes[:c]), sum(sizes[:c + 1])) for c in range(len(sizes))]
            entries = None if lay.id in helper.known_layouts else lay.entries
            helper.send(("run", op, model.training, helper.size, lay.id, entries, local, n))
            helper.known_layouts.add(lay.id)
            self._active.append((helper, len(group), views))

    def collect(self) -> list:
        """Wait for the helpers; per chunk ``(grads, loss, outputs)`` for ``"train"``, the
        outputs for ``"forward"``, in the order of the submitted groups."""
        results, failure = [], None
        for helper, chunks, views in self._active:
            try:
                helper.wait()
            except HelperError as exc:
                failure = failure or exc
                continue
            for c in range(chunks):
                out = views[f"out{c}"].copy()
                if f"loss{c}" in views:
                    grads = [views[name].copy() for name in _grad_names(views, c)]
                    results.append((grads, views[f"loss{c}"].copy(), out))
                else:
                    results.append(out)
        self._active = []
        if failure is not None:
            raise failure
        return results

    def close(self) -> None:
        """End the helper processes (idempotent)."""
        helpers, self._helpers = self._helpers, []
        for helper in helpers:
            helper.close()


def _grad_names(views: dict, c: int) -> list:
    prefix = f"grad{c}."
    return sorted((name for name in views if name.startswith(prefix)),
                  key=lambda name: int(name[len(prefix):]))


# --- the helper's side ------------------------------------------------------------------------

def _serve(read_fd: int, write_fd: int, mem_fd: int) -> None:
    """The helper process: build the model described by the first message, then answer
    requests until the caller closes the pipe."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C is the caller's to handle
    recv = Connection(read_fd, writable=False)
    send = Connection(write_fd, readable=False)
    try:
        _, arch = recv.recv()
    except EOFError:
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):                     # one core per process
        try:
            from .checkpoint import rebuild
            from .runtime import get_backend

            model = rebuild(arch, get_backend("cpu"))
        except Exception:
            send.send(("error", traceback.format_exc()))
            return
        send.send(("ready",))
        _answer(recv, send, model, mem_fd)


def _answer(recv, send, model, mem_fd: int) -> None:
    try:
        _answer_until_closed(recv, send, model, mem_fd)
    except (EOFError, OSError):   # the caller closed the pipes (its model ended, or it exited)
        return


def _answer_until_closed(recv, send, model, mem_fd: int) -> None:
    block, size = None, 0
    layouts: dict = {}          # layout id -> its entries, as sent once by the caller
    views_by_layout: dict = {}  # layout id -> views into the current block
    while True:
        _poll(recv, _SPIN_SECONDS)
        message = recv.recv()
        try:
            _, op, training, block_size, layout_id, entries, spans, n = message
            if entries is not None:
                layouts[layout_id] = entries
            if block_size != size:   # the caller grew the block: map it again
                block, size, views_by_layout = mmap.mmap(mem_fd, block_size), block_size, {}
            views = views_by_layout.get(layout_id)
            if views is None:
                views = views_by_layout[layout_id] = _Layout(layouts[layout_id]).views(block)
            _run(model, views, op, training, spans, n)
        except Exception:
            send.send(("error", traceback.format_exc()))
        else:
            send.send(("done",))


def _run(model, views: dict, op: str, training: bool, spans, n: int) -> None:
    """Compute one request: the caller's state in, per-chunk results out (all in ``views``)."""
    from .model import LOSSES, _forward, chunk_gradients

    for name, store, key in _state_items(model.layers):
        store[key] = views[name]
    model.train(training)
    x = views["x"]
    if op == "train":
        done = chunk_gradients(model.layers, LOSSES[model.loss_name], x, views["y"], spans, n)
        for c, (grads, loss, logits) in enumerate(done):
            views[f"out{c}"][...] = logits
            views[f"loss{c}"][...] = loss
            for j, grad in enumerate(grads):
                views[f"grad{c}.{j}"][...] = grad
    elif op == "forward":
        for c, (start, stop) in enumerate(spans):
            views[f"out{c}"][...] = _forward(model.layers, x[start:stop, ...])
    else:
        raise ValueError(f"unknown request {op!r}: expected 'train' or 'forward'")
