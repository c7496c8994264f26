"""The steps of scripts/gpu_check.py that compute on the device in this process.

Each step is a function returning ``(result, record)`` for :func:`check_steps.run_step`: the
record holds ``ok`` (``skipped`` with the reason where the step does not apply, e.g. a CuPy
check on the CPU) and the step's figures. The device's backend is passed in; the CPU's is
NumPy's. Backends of other GPUs come from :data:`get_backend` (a test replaces it).

The tolerances, and why:

* ``PARITY_TOLERANCE``: 20 SGD-momentum steps of LeNet-5 on the device and on the CPU from the
  same weights and batches: the largest parameter difference over the largest parameter
  magnitude, per parameter. Two correct float32 implementations differ by rounding alone,
  which on a 2-core CPU gave 5.5e-7 (PyTorch's CPU kernels against NumPy's) and 4.7e-7 (float32
  against float64) after 20 steps; 1e-4 leaves 200 times that for another summation order
  (cuBLAS, CuPy's reductions) and still fails a wrong gradient. In float64 those differences
  were 1.2e-15; 1e-10 leaves 10^5 times that.
* ``MEMORY_MARGIN``: the memory pool's bytes in use after epoch 5 less those after epoch 2. A
  steady training loop holds the same arrays at the end of every epoch; one leaked 0-d array a
  step (a loss kept on the device) would add 125 x 512 bytes an epoch here.
* ``PROBABILITY_GAP``: float32 predictions of the same weights on two devices.
"""

from __future__ import annotations

import gc
import importlib
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import numpy as np

import portacnn
from portacnn.backends import to_numpy
from portacnn.data import load_sample, normalize
from portacnn.models import lenet5
from portacnn.optim import SGD

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(portacnn.__file__).resolve().parent
get_backend = portacnn.get_backend

PARITY_STEPS, PARITY_BATCH = 20, 32
PARITY_TOLERANCE = {"float32": 1e-4, "float64": 1e-10}
MEMORY_EPOCHS, MEMORY_MARGIN = 5, 64 * 2**10        # bytes
PROBABILITY_GAP = 1e-4
SPEED_BATCH, SPEED_STEPS = 256, 10
LR, MOMENTUM, BATCH = 0.02, 0.9, 32


def skipped(reason: str) -> dict:
    """The record of a step that does not apply here (not a failure)."""
    return {"ok": True, "skipped": reason}


def digits(images: int | None = None, test_images: int | None = None):
    """The bundled digits, normalised: ``(x, y, x_test, y_test)``, the first ``images``
    training and ``test_images`` test images (None: all 4,000 and 1,000)."""
    (x, y), (xt, yt) = load_sample()
    return normalize(x[:images]), y[:images], normalize(xt[:test_images]), yt[:test_images]


def _sgd():
    return SGD(LR, momentum=MOMENTUM)


def step_smoke(device):
    """The backend (or None) and the step's record: ``get_backend(device)`` runs CuPy's smoke
    test; the device's facts and, on a GPU, the libraries CuPy loads."""
    from portacnn.backends.cupy_doctor import check_libraries

    t0 = time.perf_counter()
    backend = get_backend(device)          # DeviceError is handled by the caller
    record = {"ok": True, "seconds": time.perf_counter() - t0, "backend": backend.description,
              "device": backend.device_info()}
    if backend.accelerator:
        record["libraries"] = check_libraries()
    return backend, record


# --- parity: the same 20 steps on the device and on the CPU --------------------------------

def relative_difference(model, reference) -> dict:
    """Per parameter: max |model - reference| / max |reference| (host copies)."""
    out = {}
    for p, r in zip(model.parameters(), reference.parameters()):
        a, b = to_numpy(p.value).astype(np.float64), to_numpy(r.value).astype(np.float64)
        out[p.name] = float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-30))
    return out


def _parity(backend, dtype: str, x, y, steps: int) -> dict:
    cpu = get_backend("cpu")
    reference = lenet5(device=cpu, dtype=dtype, seed=0)
    model = lenet5(device=backend, dtype=dtype, seed=0)
    for p, r in zip(model.parameters(), reference.parameters()):   # the same weights, exactly
        p.value = backend.asarray(to_numpy(r.value), dtype=dtype)
    losses = {"device": [], "cpu": []}
    for side, net, be, opt in (("device", model, backend, _sgd()), ("cpu", reference, cpu, _sgd())):
        for i in range(steps):
            rows = slice(i * PARITY_BATCH, (i + 1) * PARITY_BATCH)
            loss, _ = net.train_step(be.asarray(x[rows], dtype=dtype), be.asarray(y[rows]), opt)
            losses[side].append(loss)
        losses[side] = [float(to_numpy(v)) for v in losses[side]]
    per_parameter = relative_difference(model, reference)
    worst = max(per_parameter.values())
    return {"ok": worst <= PARITY_TOLERANCE[dtype], "relative_difference": worst,
            "tolerance": PARITY_TOLERANCE[dtype], "per_parameter": per_parameter,
            "last_loss": {side: values[-1] for side, values in losses.items()}}


def step_parity(backend, steps: int | None = None):
    """LeNet-5, ``steps`` (default ``PARITY_STEPS``) SGD-momentum steps of ``PARITY_BATCH``
    digits on the device and on the CPU from the same weights and batches, in float32 and
    float64: parameters equal within ``PARITY_TOLERANCE`` (relative to each parameter's largest
    magnitude)."""
    if not backend.accelerator:
        return None, skipped("the device is the CPU: nothing to compare with")
    t0 = time.perf_counter()
    steps = steps or PARITY_STEPS
    x, y, _, _ = digits(steps * PARITY_BATCH)
    record = {dtype: _parity(backend, dtype, x, y, steps) for dtype in PARITY_TOLERANCE}
    failed = [d for d in PARITY_TOLERANCE if not record[d]["ok"]]
    record.update(ok=not failed, seconds=time.perf_counter() - t0, steps=steps,
                  batch=PARITY_BATCH)
    if failed:
        record["error"] = "; ".join(
            f"{d}: parameters differ from the CPU's by {record[d]['relative_difference']:.2e} "
            f"of their scale after {steps} steps (tolerance {PARITY_TOLERANCE[d]:g}): a "
            "kernel computes differently on the device" for d in failed)
    return None, record


# --- no hidden host synchronisation inside a training step --------------------------------

def where(exc: BaseException, depth: int = 2) -> str:
    """The innermost ``depth`` portacnn source lines in ``exc``'s traceback, outermost first
    (else the innermost line): the operation and what called it."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if Path(f.filename).resolve().is_relative_to(PACKAGE)]
    lines = []
    for frame in (ours or frames)[-depth:]:
        try:
            name = Path(frame.filename).resolve().relative_to(ROOT)
        except ValueError:
            name = frame.filename
        lines.append(f"{name}:{frame.lineno} in {frame.name}: {frame.line}")
    return " -> ".join(lines)


def step_sync(backend, steps: int = 5):
    """``steps`` training steps (after one warm-up) inside ``cupyx.allow_synchronize(False)``:
    a step that reads the device back (``float(x)``, ``.get()``, ``synchronize()``) raises
    ``cupyx.DeviceSynchronized``, recorded with the portacnn line that did it."""
    if not backend.accelerator:
        return None, skipped("the device is the CPU: no host synchronisation to detect")
    try:
        cupyx = importlib.import_module("cupyx")
        allow_synchronize = cupyx.allow_synchronize
    except (ImportError, AttributeError) as exc:
        return None, skipped(f"this CuPy has no cupyx.allow_synchronize ({exc})")
    x, y, _, _ = digits((steps + 1) * BATCH)
    model, opt = lenet5(device=backend, seed=0), _sgd()
    batches = [(backend.asarray(x[i * BATCH:(i + 1) * BATCH], dtype="float32"),
                backend.asarray(y[i * BATCH:(i + 1) * BATCH])) for i in range(steps + 1)]
    model.train_step(*batches[0], opt)                 # warm-up: compilation, optimizer state
    backend.synchronize()
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")           # CuPy marks the API experimental
            with allow_synchronize(False):
                for xb, yb in batches[1:]:
                    model.train_step(xb, yb, opt)
    except cupyx.DeviceSynchronized as exc:
        return None, {"ok": False, "operation": where(exc), "error": (
            f"a training step waits for the device (host synchronisation) at {where(exc)}: "
            f"{exc}")}
    queued = time.perf_counter() - t0
    backend.synchronize()
    return None, {"ok": True, "steps": steps, "seconds_queued": queued,
                  "seconds_done": time.perf_counter() - t0}


# --- device memory flat across epochs ---------------------------------------------------------

def step_memory(backend, images: int | None = None):
    """LeNet-5 for ``MEMORY_EPOCHS`` epochs on the digits, the memory pool's bytes in use read
    after each (garbage collected, device synchronised): flat from epoch 2 to the last within
    ``MEMORY_MARGIN``. Also the epochs' seconds and the test accuracy."""
    if not backend.accelerator:
        return None, skipped("the device is the CPU: no device memory pool")
    pool = backend.native.get_default_memory_pool()
    x, y, xt, yt = digits(images, images)
    model, opt = lenet5(device=backend, seed=0), _sgd()
    used, seconds = [], []
    for epoch in range(MEMORY_EPOCHS):
        history = model.fit(x, y, epochs=1, batch_size=BATCH, optimizer=opt, verbose=0,
                            seed=epoch)
        seconds.append(history["seconds"][0])
        gc.collect()
        backend.synchronize()
        with backend.activate():               # the pool counts the current device's bytes
            used.append(int(pool.used_bytes()))
    growth = used[-1] - used[1]
    _, accuracy = model.evaluate(xt, yt)
    record = {"ok": growth <= MEMORY_MARGIN, "used_bytes_after_epochs": used,
              "growth_bytes": growth, "margin_bytes": MEMORY_MARGIN, "epoch_seconds": seconds,
              "first_epoch_extra_seconds": seconds[0] - float(np.mean(seconds[1:])),
              "test_accuracy": float(accuracy), "images": int(x.shape[0])}
    if not record["ok"]:
        record["error"] = (f"device memory grew by {growth:,} bytes from epoch 2 to epoch "
                           f"{MEMORY_EPOCHS} (margin {MEMORY_MARGIN:,}): something keeps device "
                           "arrays from one epoch to the next")
    return None, record


# --- checkpoints across devices ---------------------------------------------------------------

def _round_trip(source, target, x, y, xt, folder: Path) -> dict:
    model = lenet5(device=source, seed=0)
    model.fit(x, y, epochs=1, batch_size=BATCH, optimizer=_sgd(), verbose=0)
    loaded = portacnn.load(model.save(folder / "model.safetensors"), device=target)
    same = all(np.array_equal(to_numpy(a.value), to_numpy(b.value))
               for a, b in zip(model.parameters(), loaded.parameters()))
    ours, theirs = to_numpy(model.predict(xt)), to_numpy(loaded.predict(xt))
    gap = float(np.max(np.abs(ours - theirs)))
    agree = float(np.mean(ours.argmax(axis=1) == theirs.argmax(axis=1)))
    return {"ok": same and gap <= PROBABILITY_GAP and agree == 1.0, "parameters_equal": same,
            "max_probability_gap": gap, "argmax_agreement": agree,
            "loaded_on": loaded.backend.description}


def step_checkpoint(backend, images: int | None = None):
    """A model trained on the device (256 digits), saved, loaded on the CPU; and one trained on
    the CPU, loaded on the device: the loaded parameters equal bit for bit, the predictions on
    the 1,000 test digits within ``PROBABILITY_GAP`` and the same class for every digit
    (``images``: that many training and test digits instead)."""
    x, y, xt, _ = digits(images or 256, images)
    cpu = get_backend("cpu")
    record = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, source, target in (("device_to_cpu", backend, cpu),
                                     ("cpu_to_device", cpu, backend)):
            folder = Path(tmp) / name
            folder.mkdir()
            record[name] = _round_trip(source, target, x, y, xt, folder)
    record["ok"] = all(record[k]["ok"] for k in ("device_to_cpu", "cpu_to_device"))
    if not record["ok"]:
        record["error"] = "; ".join(
            f"{k}: parameters equal {r['parameters_equal']}, largest probability gap "
            f"{r['max_probability_gap']:.2e}, argmax agreement {r['argmax_agreement']:.4f}"
            for k, r in record.items() if isinstance(r, dict) and not r["ok"])
    return None, record


# --- every visible GPU ------------------------------------------------------------------------

def _one_gpu(index: int, x, y) -> dict:
    t0 = time.perf_counter()
    try:
        backend = get_backend(f"cuda:{index}")
        model = lenet5(device=backend, seed=0)
        loss, _ = model.train_step(backend.asarray(x, dtype="float32"), backend.asarray(y),
                                   _sgd())
        loss = float(to_numpy(loss))
        stray = [p.name for p in model.parameters() if not backend.owns(p.value)]
        row = {"ok": not stray and np.isfinite(loss), "loss": loss,
               "gpu": backend.device_info().get("gpu")}
        if stray:
            row["error"] = f"parameters not on cuda:{index}: {', '.join(stray)}"
    except Exception as exc:           # noqa: BLE001 - one GPU's failure is its row
        row = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    return {"device": f"cuda:{index}", **row, "seconds": time.perf_counter() - t0}


def step_devices(backend):
    """Every GPU CuPy sees (``getDeviceCount``), as ``cuda:N``: its backend (smoke test), one
    training step, the parameters on that device."""
    if not backend.accelerator:
        return None, skipped("the device is the CPU")
    count = backend.native.cuda.runtime.getDeviceCount()
    x, y, _, _ = digits(BATCH)
    rows = [_one_gpu(index, x, y) for index in range(count)]
    record = {"ok": all(r["ok"] for r in rows), "count": count, "devices": rows}
    if not record["ok"]:
        record["error"] = "; ".join(f"{r['device']}: {r.get('error', 'loss not finite')}"
                                    for r in rows if not r["ok"])
    return None, record


# --- speed: the GPU against the CPU at batch 256 -------------------------------------------

def step_seconds(backend, steps: int = SPEED_STEPS, batch: int = SPEED_BATCH) -> float:
    """Seconds of one LeNet-5 SGD-momentum training step at ``batch``, the median of
    ``steps`` after two warm-ups, the device synchronised before each clock read."""
    rng = np.random.default_rng(0)
    model, opt = lenet5(device=backend, seed=0), _sgd()
    xb = backend.asarray(rng.normal(size=(batch, 1, 28, 28)), dtype="float32")
    yb = backend.asarray(rng.integers(0, 10, batch))
    times = []
    for i in range(steps + 2):
        backend.synchronize()
        t0 = time.perf_counter()
        model.train_step(xb, yb, opt)
        backend.synchronize()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


def speed(backend) -> dict:
    """The pass threshold of the bench step: a training step at batch ``SPEED_BATCH`` faster
    on the device than on the CPU (NumPy, its BLAS at its default thread count)."""
    cpu = get_backend("cpu")
    ours, theirs = step_seconds(backend), step_seconds(cpu)
    record = {"ok": ours < theirs, "batch": SPEED_BATCH, "device_step_seconds": ours,
              "cpu_step_seconds": theirs, "speedup_over_cpu": theirs / ours,
              "cpu_threads": cpu.thread_info()}
    if not record["ok"]:
        record["error"] = (f"a training step at batch {SPEED_BATCH} takes {ours * 1e3:.1f} ms "
                           f"on the device and {theirs * 1e3:.1f} ms on the CPU: the GPU should "
                           "be faster (is another process using it? nvidia-smi)")
    return record
