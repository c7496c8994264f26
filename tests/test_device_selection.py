"""Every path that computes keeps its arrays on the model's device.

Two checks, both on ``array_api_strict``'s second device (``device1``), where an array made on
the default device and mixed with the model's raises:

* plain ``device1``: array_api_strict honours ``device=``, so an array made without it lands on
  the default device and the next operation with a model array raises;
* a simulated CuPy: array-api-compat ignores ``device=`` in CuPy's creation functions
  (``zeros``, ``arange``, ``zeros_like``...) and CuPy allocates on the *current* device, which
  only :meth:`Backend.activate` changes. :func:`simulated_cupy` makes array_api_strict behave
  so for one test: its creation functions drop ``device=`` and use the current device of a
  context variable (per thread, like CuPy's), which ``StrictBackend.activate`` then sets, as
  ``CupyBackend.activate`` does (backends made from an array, for a layer built on its first
  input, are StrictBackends too). Code that computes outside ``activate`` creates arrays on
  the default device and fails.

The paths: build, forward, backward, train_step, fit (with validation data), evaluate,
predict, the optimizer's state, save and load, and a layer used on its own.
"""

from __future__ import annotations

import contextlib
import contextvars

import numpy as np
import pytest

array_api_strict = pytest.importorskip("array_api_strict")

from portacnn import Conv2D, Dense, Dropout, Flatten, ReLU, Sequential, load  # noqa: E402
from portacnn.backends import StrictBackend  # noqa: E402
from portacnn.models import lenet5  # noqa: E402
from portacnn.optim import SGD, Adam  # noqa: E402

DEFAULT = array_api_strict.Device("CPU_DEVICE")       # CuPy's device 0
DEVICE1 = array_api_strict.Device("device1")          # the model's device: "cuda:1"

_CURRENT = contextvars.ContextVar("simulated_current_device", default=DEFAULT)
CREATION = ("zeros", "ones", "empty", "full", "arange", "eye", "linspace")
LIKE = ("zeros_like", "ones_like", "empty_like", "full_like")


class NeverActivates(StrictBackend):
    """The same simulated library with an ``activate`` that does nothing: the control."""

    def activate(self):
        return contextlib.nullcontext()


@contextlib.contextmanager
def _use(device):
    token = _CURRENT.set(device)
    try:
        yield
    finally:
        _CURRENT.reset(token)


# Functions that make no array, or move one between devices: they run anywhere.
ANYWHERE = {"asarray", "from_dlpack", "finfo", "iinfo", "isdtype", "result_type", "can_cast",
            "Device", "get_array_api_strict_flags", "set_array_api_strict_flags",
            "reset_array_api_strict_flags", "ArrayAPIStrictFlags", "__array_namespace_info__"}


@pytest.fixture
def simulated_cupy(monkeypatch):
    """array_api_strict with CuPy's device rules under array-api-compat, for this test:
    creation functions allocate on the current device whatever ``device=`` says, and every
    other function refuses arrays that are not on the current device (CuPy launches there)."""
    for name in array_api_strict.__all__:
        real = getattr(array_api_strict, name)
        if name in ANYWHERE or name in CREATION + LIKE or not callable(real) or isinstance(
                real, type):
            continue

        def on_current_device_only(*args, _real=real, _name=name, **kwargs):
            current = _CURRENT.get()
            for a in list(args) + [v for v in kwargs.values()] + [
                    v for arg in args if isinstance(arg, (list, tuple)) for v in arg]:
                if isinstance(a, array_api_strict._array_object.Array) and a.device != current:
                    raise ValueError(f"{_name} launched on the current device {current} with an "
                                     f"array on device {a.device}")
            return _real(*args, **kwargs)

        monkeypatch.setattr(array_api_strict, name, on_current_device_only)
    for name in CREATION + LIKE:
        real = getattr(array_api_strict, name)

        def on_current_device(*args, _real=real, device=None, **kwargs):
            return _real(*args, device=_CURRENT.get(), **kwargs)   # device= is ignored

        monkeypatch.setattr(array_api_strict, name, on_current_device)
    real_asarray = array_api_strict.asarray

    def asarray(obj, /, *, device=None, **kwargs):
        # compat honours asarray's device=; without it host data goes to the current device
        if device is None and not isinstance(obj, array_api_strict._array_object.Array):
            device = _CURRENT.get()
        return real_asarray(obj, device=device, **kwargs)

    monkeypatch.setattr(array_api_strict, "asarray", asarray)
    monkeypatch.setattr(StrictBackend, "activate", lambda self: _use(self.device))
    return StrictBackend(array_api_strict, DEVICE1, native=array_api_strict)


@pytest.fixture
def device1():
    return StrictBackend(array_api_strict, DEVICE1, native=array_api_strict)


def _data(n=24, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, n)


def _on(backend, arrays):
    """Every array in ``arrays`` on ``backend``'s device (returns the offenders' names)."""
    return [name for name, a in arrays.items() if str(a.device) != str(backend.device)]


def _every_array(model):
    arrays = {p.name: p.value for p in model.parameters()}
    arrays.update({f"grad {p.name}": p.grad for p in model.parameters() if p.grad is not None})
    arrays.update({f"buffer {b.name}": b.value for b in model.buffers()})
    if model.optimizer is not None:
        arrays.update({f"state {k}.{s}": v for k, slots in model.optimizer.state.items()
                       for s, v in slots.items()})
    return arrays


def _small_net(backend):
    """A network with every kind of state: conv, batch norm buffers, dropout masks, dense."""
    return lenet5(device=backend, seed=0, activation="relu", pool="max", batchnorm=True)


def _every_path(backend, tmp_path, optimizer):
    x, y = _data()
    model = _small_net(backend)
    assert not _on(backend, _every_array(model))                          # build
    model.fit(x, y, epochs=1, batch_size=8, optimizer=optimizer, verbose=0,
              validation_data=_data(8, seed=1))                           # fit + evaluate
    assert not _on(backend, _every_array(model))
    xb, yb = backend.asarray(x[:8], dtype="float32"), backend.asarray(y[:8])
    loss, logits = model.train_step(xb, yb, model.optimizer)              # one step by hand
    assert not _on(backend, {"loss": loss, "logits": logits, **_every_array(model)})
    loss, acc = model.evaluate(x, y, batch_size=16)
    assert np.isfinite(loss) and 0.0 <= acc <= 1.0
    probs = model.predict(x, batch_size=16)
    assert not _on(backend, {"probabilities": probs})
    model.eval()
    assert not _on(backend, {"forward": model.forward(xb)})
    model.train()
    path = model.save(tmp_path / "model.safetensors")
    again = load(path, device=backend)                                    # load
    assert not _on(backend, _every_array(again))
    again.fit(x, y, epochs=1, batch_size=12, optimizer=again.optimizer, verbose=0)
    assert not _on(backend, _every_array(again))
    np.testing.assert_allclose(backend.to_numpy(again.predict(x[:4])).sum(axis=1), 1.0,
                               rtol=1e-5)


@pytest.mark.parametrize("optimizer", [SGD(0.01, momentum=0.9), Adam(1e-3)],
                         ids=["sgd-momentum", "adam"])
def test_every_path_stays_on_the_second_strict_device(device1, tmp_path, optimizer):
    _every_path(device1, tmp_path, optimizer)


@pytest.mark.parametrize("optimizer", [SGD(0.01, momentum=0.9), Adam(1e-3)],
                         ids=["sgd-momentum", "adam"])
def test_every_path_stays_on_the_current_device_of_a_simulated_cupy(simulated_cupy, tmp_path,
                                                                    optimizer):
    _every_path(simulated_cupy, tmp_path, optimizer)


def test_a_layer_used_alone_stays_on_the_simulated_device(simulated_cupy):
    be = simulated_cupy
    conv = Conv2D(4, 3, padding=1, in_channels=1, device=be, seed=0)      # built at once
    assert str(conv.params["bias"].device) == str(DEVICE1)
    x = be.asarray(np.ones((2, 1, 6, 6)), dtype="float32")
    y = conv(x)
    dx = Flatten()(y)
    dense = Dense(3, in_features=4 * 36, device=be)
    out = ReLU()(Dropout(0.5, seed=0)(dense(dx)))
    assert str(out.device) == str(DEVICE1)
    assert str(conv.backward(y).device) == str(DEVICE1)


def test_the_simulation_catches_code_that_does_not_activate(simulated_cupy):
    """The control: the same library with an ``activate`` that does nothing puts biases on
    the default device, and the first forward mixes devices."""
    careless = NeverActivates(array_api_strict, DEVICE1, native=array_api_strict)
    with pytest.raises((ValueError, TypeError), match="device"):
        model = Sequential([Conv2D(2, 3), Flatten(), Dense(3)], input_shape=(1, 6, 6),
                           device=careless)
        model.forward(careless.asarray(np.ones((1, 1, 6, 6)), dtype="float32"))


def test_the_current_device_is_per_thread_as_on_cupy(simulated_cupy):
    import threading

    seen = []
    with simulated_cupy.activate():
        worker = threading.Thread(target=lambda: seen.append(_CURRENT.get()))
        worker.start()
        worker.join()
        assert _CURRENT.get() == DEVICE1
    assert seen == [DEFAULT]


def test_an_optimizer_step_by_hand_runs_on_the_parameters_device(simulated_cupy):
    be = simulated_cupy
    model = Sequential([Conv2D(2, 3), Flatten(), Dense(3)], input_shape=(1, 6, 6), device=be)
    x = be.asarray(np.ones((4, 1, 6, 6)), dtype="float32")
    y = be.asarray(np.array([0, 1, 2, 0]))
    opt = Adam(1e-2)
    for _ in range(2):
        model.train_step(x, y, opt)
        opt.step(model.parameters())       # outside any activate(): the optimizer activates
    assert not _on(be, _every_array(model) | {
        f"state {k}.{s}": v for k, slots in opt.state.items() for s, v in slots.items()})


def test_feature_maps_compute_on_the_models_device(simulated_cupy):
    """``plot_feature_maps`` runs the layers one by one: under the model's device, as every
    other path (``train --device cuda:1 --plots``)."""
    pytest.importorskip("matplotlib", reason="matplotlib is not installed (portacnn[viz])")
    from portacnn import viz

    model = lenet5(device=simulated_cupy, seed=0)
    fig = viz.plot_feature_maps(model, np.ones((1, 28, 28), dtype=np.float32))
    assert len(fig.axes) > 0 and model.training


# --- one GPU per process (distributed.rank_device) ---------------------------------------------
@pytest.fixture
def four_gpus(monkeypatch):
    """A fake CuPy with four devices that records each device it touches and the current one;
    the node-local rank is read from ``monkeypatch.setattr(mpi, "local_rank", ...)``."""
    import sys
    import types

    import array_api_compat
    from fake_cupy import fake_cupy

    cupy = fake_cupy(count=4)
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    xp = types.SimpleNamespace(__name__="array_api_compat.cupy",
                               empty=lambda *a, **k: np.empty(0))
    monkeypatch.setattr(array_api_compat, "array_namespace", lambda *a: xp)
    return cupy


@pytest.mark.parametrize("rank,spec,device", [(0, "gpu", 0), (3, "gpu", 3), (6, "cuda", 2),
                                              (5, None, 1), (1, "cuda:3", 3)])
def test_each_rank_touches_only_its_gpu_and_makes_it_current(four_gpus, monkeypatch, rank, spec,
                                                             device):
    from portacnn.distributed import mpi

    monkeypatch.setattr(mpi, "local_rank", lambda comm=None: rank)
    monkeypatch.setenv("PORTACNN_DEVICE", "gpu")
    backend = mpi.rank_device(spec)
    assert backend.device.id == device
    assert set(four_gpus.touched) == {device}, "a device other than the rank's was touched"
    assert four_gpus.current == device


# --- device buffers handed to MPI (DataParallel(cuda_aware=True)) -----------------------------
class _DeviceBufferComm:
    """Two processes' worth of MPI for device buffers: the blocking collectives copy this
    process's buffer into every slot (as if the other process sent the same), with the
    buffer's own ``__setitem__`` (array_api_strict refuses a buffer on another device). The
    non-blocking ones are absent: MPI's CUDA support does not cover them."""

    rank, size = 0, 2

    def __init__(self):
        self.calls = []

    def Ibarrier(self):
        self.calls.append("Ibarrier")
        return type("Done", (), {"Test": lambda self: True})()

    def Allgather(self, send, gathered):
        self.calls.append("Allgather")
        for r in range(self.size):
            gathered[r, ...] = send

    def Allreduce(self, send, total, op):
        self.calls.append("Allreduce")
        total[...] = send * self.size


@pytest.mark.parametrize("reduction", ["ordered", "mpi"])
def test_device_buffers_use_blocking_collectives_on_the_models_device(simulated_cupy, monkeypatch,
                                                                      reduction):
    import types

    from portacnn.distributed import DataParallel, mpi

    monkeypatch.setattr(mpi, "_mpi", lambda: types.SimpleNamespace(SUM="sum"))
    model = Sequential([Flatten(), Dense(3)], input_shape=(1, 2, 2), device=simulated_cupy)
    dp = DataParallel.__new__(DataParallel)          # the replicas without an MPI job
    dp.model, dp.comm, dp.rank, dp.size = model, _DeviceBufferComm(), 0, 2
    dp.reduction, dp.cuda_aware, dp.timeout = reduction, True, 5.0
    flat = simulated_cupy.asarray(np.arange(6.0), dtype="float32")
    total = dp.allreduce(flat)
    assert str(total.device) == str(DEVICE1)
    np.testing.assert_array_equal(simulated_cupy.to_numpy(total), 2 * np.arange(6.0))
    assert dp.comm.calls == ["Ibarrier", "Allgather" if reduction == "ordered" else "Allreduce"]
