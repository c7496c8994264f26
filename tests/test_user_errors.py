"""Issue 14: what a new user does wrong, and the habits people bring from Keras and PyTorch.

Each row of the issue's table is a row here: the bad inputs raise an error of the right type
whose message names the problem and the fix (the words asserted are the ones that matter);
the habits are shown to work. Every error is raised before the model is changed.
"""

import contextlib
import importlib.util
import io
import os
import re
import socket
import warnings
from pathlib import Path

import numpy as np
import pytest

import portacnn
from portacnn import (AvgPool2D, BatchNorm2D, CheckpointError, Conv2D, Dense, DeviceError,
                      Dropout, Flatten, MaxPool2D, ReLU, Sequential, Upsample2D, get_backend)
from portacnn.cli import main
from portacnn.cli.run import _threads
from portacnn.data import DataError, download_mnist, load_mnist
from portacnn.optim import SGD, Adam, RMSprop

from helpers import mnist_registry, small_net, toy_data

ROOT = Path(__file__).resolve().parents[1]


def ten_classes(**kwargs):
    """A 10-class model on 6x6 images, as MNIST's labels need."""
    return Sequential([Flatten(), Dense(10)], input_shape=(1, 6, 6), **kwargs)


def labels(bad_value=None, at=5, n=40):
    y = np.arange(n) % 10
    if bad_value is not None:
        y[at] = bad_value
    return y


def weights(model):
    return [np.array(model.backend.to_numpy(p.value)) for p in model.parameters()]


def one_hot(n=40, zero_row=None):
    y = np.eye(10, dtype=np.float32)[np.arange(n) % 10]
    if zero_row is not None:
        y[zero_row] = 0
    return y


X = toy_data(40)[0]


def nan_pixel(x, at=7):
    x = x.copy()
    x[at, 0, 2, 2] = np.nan
    return x


def strict_model():
    return ten_classes(device="array_api_strict")


def _forward_then_backward(model, mode):
    getattr(model, mode)()
    out = model.forward(X)
    model.backward(np.ones(out.shape, np.float32))


def _strict_diverges():
    model = small_net(device="array_api_strict")
    model.backend.host_sync_is_free = False
    model.fit(*toy_data(60), epochs=3, batch_size=4, optimizer=SGD(50), verbose=1,
              file=io.StringIO())


# (what the user did, the call, the error, the words that matter in its message)
ERRORS = [
    *[(f"label {v} for 10 classes", lambda v=v: ten_classes().fit(X, labels(v), verbose=0),
       ValueError, [rf"y\[5\] is {v} but the model has 10 classes", r"integers in \[0, 10\)"])
      for v in (10, -1, 255, 1000)],
    ("string labels", lambda: ten_classes().fit(X, labels().astype(str), verbose=0),
     TypeError, [r"y holds <U\d+ labels", r"integers in \[0, 10\)", "np.unique"]),
    ("float labels", lambda: ten_classes().fit(X, labels().astype(float), verbose=0),
     TypeError, ["float64 labels", r"y.astype\(int\)"]),
    ("a column of labels", lambda: ten_classes().fit(X, labels()[:, None], verbose=0),
     ValueError, [r"shape \(40, 1\)", r"y.reshape\(-1\)"]),
    ("a one-hot row of zeros", lambda: ten_classes().fit(X, one_hot(zero_row=2), verbose=0),
     ValueError, [r"y\[2\] is not a one-hot row", "sum 0"]),
    ("a bad label in evaluate", lambda: ten_classes().evaluate(X, labels(12, at=0)),
     ValueError, [r"y\[0\] is 12 but the model has 10 classes"]),
    ("a bad label in the validation data",
     lambda: ten_classes().fit(X, labels(), validation_data=(X, labels(10, at=3)), verbose=0),
     ValueError, [r"validation y\[3\] is 10"]),
    ("labels on the device", lambda: strict_model().fit(X, get_backend("array_api_strict")
                                                        .asarray(labels(-1, at=9)), verbose=0),
     ValueError, [r"y\[9\] is -1 but the model has 10 classes"]),
    ("one NaN pixel in x", lambda: ten_classes().fit(nan_pixel(X), labels(), verbose=0),
     ValueError, [r"x\[7\] holds NaN or infinity \(1 of 40 samples", "np.isfinite"]),
    *[(f"validation_data {what}",
       lambda v=value: ten_classes().fit(X, labels(), validation_data=v(), verbose=0),
       error, [r"validation_data must be a pair \(x_val, y_val\)", words,
               r"validation_data=\(x_test, y_test\)", "validation_split"])
      for what, value, error, words in (
          ("without labels", lambda: (X,), ValueError, "got a tuple of 1 item"),
          ("of three", lambda: (X, labels(), labels()), ValueError, "got a tuple of 3 items"),
          ("as one array", lambda: X, TypeError, "got a numpy.ndarray"),
          ("as a dict", lambda: {"x": X, "y": labels()}, TypeError, "got a dict"),
          ("with y None", lambda: (X, None), TypeError, "y_val is None"))],
    ("validation_data of a list", lambda: ten_classes().fit(
        X, labels(), validation_data=(X.tolist(), labels()), verbose=0),
     TypeError, [r"validation x is a list", "host NumPy array"]),
    ("infinity in the validation x",
     lambda: ten_classes().fit(X, labels(), validation_data=(np.full_like(X, np.inf), labels()),
                               verbose=0),
     ValueError, [r"validation x\[0\] holds NaN or infinity \(40 of 40"]),
    ("a NaN pixel in x on the device",
     lambda: strict_model().fit(get_backend("array_api_strict").asarray(nan_pixel(X, 11)),
                                labels(), verbose=0),
     ValueError, [r"x\[11\] holds NaN or infinity"]),
    ("a learning rate that makes the loss NaN",
     lambda: small_net().fit(*toy_data(60), epochs=3, batch_size=4, optimizer=SGD(50), verbose=0),
     FloatingPointError, [r"the loss became nan in epoch [12]/3", r"SGD\(lr=50.0",
                          r"lower the learning rate \(e.g. lr=5\)", "rebuild or reload"]),
    ("NaN loss on a device that is read once per epoch", _strict_diverges,
     FloatingPointError, [r"the loss became nan in epoch [12]/3", "lower the learning rate"]),
    ("Conv2D told the wrong in_channels",
     lambda: Sequential([Conv2D(4, 3, in_channels=3), ReLU(), Flatten(), Dense(3)],
                        input_shape=(1, 6, 6)),
     ValueError, [r"layer 0 \(Conv2D\): Conv2D expects 3 input channel\(s\), got 1"]),
    ("weights set by hand with the wrong shape",
     lambda: Sequential([Flatten(), _dense_with_weight((3, 30))], input_shape=(1, 6, 6)),
     ValueError, [r"layer 1 \(Dense\): its parameters have shapes .*\(3, 30\)", r"\(3, 36\)"]),
    ("a float64 layer in a float32 model",
     lambda: Sequential([Flatten(), Dense(3, dtype="float64")], input_shape=(1, 6, 6)),
     ValueError, ["Dense was made with dtype='float64' but the model is float32",
                  "pass dtype='float64' to Sequential"]),
    *[(f"{what} given True", make, error, [rf"{what} must be {kind}, got True"])
      for what, make, error, kind in (
          ("epochs", lambda: ten_classes().fit(X, labels(), epochs=True, verbose=0), ValueError,
           "a positive int"),
          ("batch_size", lambda: ten_classes().predict(X, batch_size=True), ValueError,
           "a positive int"),
          ("out_features", lambda: Dense(True), ValueError, "a positive int"),
          ("learning rate", lambda: SGD(True), ValueError, "a positive number"))],
    ("epochs of 2.5", lambda: ten_classes().fit(X, labels(), epochs=2.5, verbose=0),
     ValueError, [r"epochs must be a positive int, got 2.5"]),
    ("in_channels of 1.5", lambda: Conv2D(4, 3, in_channels=1.5),
     ValueError, [r"in_channels must be a positive int, got 1.5"]),
    ("a seed of 0.5", lambda: Sequential([Dense(3)], seed=0.5),
     ValueError, [r"seed must be an int >= 0 or None, got 0.5"]),
    ("model.backward before any forward",
     lambda: ten_classes().backward(np.ones((2, 10), np.float32)),
     RuntimeError, ["Sequential.backward called before forward", r"model.train\(\)"]),
    ("model.backward after an eval-mode forward",
     lambda: _forward_then_backward(ten_classes(), "eval"),
     RuntimeError, ["after a forward in eval mode", r"model.train\(\)"]),
    ("layer.backward before forward",
     lambda: Dense(3, in_features=4).backward(np.ones((2, 3), np.float32)),
     RuntimeError, ["Dense.backward called before forward in training mode"]),
]


def _dense_with_weight(shape):
    dense = Dense(3, in_features=36, seed=0)
    dense.params["weight"] = np.zeros(shape, np.float32)
    return dense


@pytest.mark.parametrize("action,error,words", [pytest.param(a, e, w, id=what)
                                                for what, a, e, w in ERRORS])
def test_bad_input_gets_a_clear_error(action, error, words):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)     # the divergence hint, tested below
        with pytest.raises(error) as info:
            action()
    for pattern in words:
        assert re.search(pattern, str(info.value)), (pattern, str(info.value))


def test_errors_come_before_any_damage():
    model = ten_classes()
    before = weights(model)
    for x, y, kwargs in ((nan_pixel(X), labels(), {}), (X, labels(10), {}),
                         (X, labels().astype(str), {}), (X, labels(), {"validation_data": (X,)}),
                         (X, labels(), {"validation_data": (X, labels(), labels())})):
        with pytest.raises((ValueError, TypeError)):
            model.fit(x, y, verbose=0, **kwargs)
    assert all(np.array_equal(a, b) for a, b in zip(before, weights(model)))
    assert model.optimizer is None                      # not even an optimizer was set


def test_saving_onto_a_directory_names_a_file_and_writes_nothing(tmp_path):
    with pytest.raises(CheckpointError, match=r"is a directory: give a file name such as"):
        ten_classes().save(tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning",
                            "ignore:invalid value:RuntimeWarning")
def test_where_reading_the_loss_is_free_a_nan_stops_training_within_the_epoch(monkeypatch):
    from portacnn.training.progress import Progress

    monkeypatch.setattr(Progress, "EVERY_S", 0.0)                 # a progress line per batch
    optimizer = SGD(1e30)
    with pytest.raises(FloatingPointError, match=r"the loss became nan in epoch 1/1"):
        small_net().fit(*toy_data(64), epochs=1, batch_size=4, optimizer=optimizer, verbose=1,
                        file=io.StringIO())
    assert optimizer.steps < 16 // 2                   # long before the epoch's 16 steps


@pytest.mark.parametrize("device", ["gpu", "cuda:99"])
def test_a_device_from_the_environment_says_so(monkeypatch, device):
    monkeypatch.setenv("PORTACNN_DEVICE", device)
    try:
        backend = get_backend()
    except DeviceError as exc:
        assert re.search(rf"the device '{device}' came from \$PORTACNN_DEVICE: unset it or pass "
                         "device=", str(exc)), str(exc)
    else:
        pytest.skip(f"{device} works here ({backend.description})")


def test_a_diverging_loss_that_stays_finite_gets_a_hint():
    with pytest.warns(RuntimeWarning) as record:
        small_net().fit(*toy_data(60), epochs=2, batch_size=4, optimizer=SGD(10), verbose=0)
    assert len(record) == 1                              # once per fit, not once per epoch
    text = str(record[0].message)
    assert re.search(r"training is diverging: the loss is \S+ after epoch 1/2, far above the "
                     r"1.10 of a uniform guess", text), text
    assert "lower the learning rate (e.g. lr=1)" in text


def test_a_healthy_run_gets_no_divergence_hint():
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        small_net().fit(*toy_data(60), epochs=2, batch_size=4, optimizer=Adam(0.01), verbose=0)


# --- habits from Keras and PyTorch ---------------------------------------------------------
def test_numpy_scalars_are_numbers_like_any_other(tmp_path):
    """Sizes, counts and rates computed with NumPy (np.int64, np.float32) are accepted wherever
    a Python int or float is, and stored as plain numbers: the model still saves and loads."""
    i, f = np.int64, np.float32
    x, y = toy_data(24)
    model = Sequential([Conv2D(i(4), i(3), stride=np.int32(1), padding=i(1), in_channels=i(1),
                               seed=i(2)),
                        BatchNorm2D(i(4), eps=f(1e-5), momentum=f(0.1)), ReLU(),
                        Upsample2D(i(2)), MaxPool2D(i(2), stride=(i(2), i(2))),
                        AvgPool2D(np.uint8(2)), Flatten(), Dropout(f(0.1), seed=i(0)),
                        Dense(i(3), in_features=i(36))],
                       input_shape=(i(1), i(6), i(6)), seed=i(0))
    for optimizer in (SGD(f(0.02), momentum=f(0.9), weight_decay=f(1e-4)),
                      Adam(f(1e-3), betas=(f(0.9), f(0.999)), eps=f(1e-8)),
                      RMSprop(np.float64(1e-3), alpha=f(0.9), momentum=f(0.5))):
        model.optimizer = None
        model.fit(x, y, epochs=i(2), batch_size=np.int32(8), optimizer=optimizer,
                  validation_split=f(0.25), seed=i(1), verbose=i(0))
    assert type(model.optimizer.lr) is float and type(model.seed) is int
    model.evaluate(x, y, batch_size=i(8))
    assert model.predict(x, batch_size=np.uint16(5)).shape == (24, 3)
    with model.backend.limit_threads(i(1)):
        pass
    loaded = portacnn.load(model.save(tmp_path / "m.safetensors"))    # the config is JSON
    assert loaded.architecture() == model.architecture()


def test_layers_told_their_input_size_are_checked_and_keep_their_weights():
    conv = Conv2D(4, 3, padding=1, in_channels=1, seed=3)
    dense = Dense(3, in_features=36, seed=4)
    dense.params["bias"] = np.full((3,), 0.5, np.float32)          # set by hand
    conv_w, dense_w = np.array(conv.params["weight"]), np.array(dense.params["weight"])
    model = Sequential([conv, ReLU(), MaxPool2D(2), Flatten(), dense], input_shape=(1, 6, 6))
    assert model.built and model.output_shape == (3,)
    assert np.array_equal(model.layers[0].params["weight"], conv_w)
    assert np.array_equal(model.layers[4].params["weight"], dense_w)
    assert np.array_equal(model.layers[4].params["bias"], np.full((3,), 0.5, np.float32))
    model.fit(*toy_data(24), epochs=1, batch_size=8, verbose=0)     # and it trains


def test_a_built_layer_takes_the_models_device_and_dtype():
    conv = Conv2D(2, 3, in_channels=1, seed=3)                      # float32 on the CPU
    model = Sequential([conv, Flatten(), Dense(3)], input_shape=(1, 6, 6), dtype="float64",
                       device="array_api_strict")
    w = model.layers[0].params["weight"]
    assert model.backend.owns(w) and w.dtype == model.backend.xp.float64
    assert np.allclose(model.backend.to_numpy(w), np.asarray(Conv2D(2, 3, in_channels=1,
                                                                    seed=3).params["weight"]))
    model.forward(model.backend.asarray(toy_data(2)[0], dtype="float64"))


@pytest.mark.parametrize("first_call", ["fit", "predict", "evaluate", "forward"])
def test_without_input_shape_the_first_batch_builds_the_model(first_call):
    x, y = toy_data(24)
    reference = small_net()
    model = Sequential([Conv2D(4, 3, padding=1), ReLU(), MaxPool2D(2), Flatten(), Dense(3)])
    assert not model.built
    args = {"fit": (x, y), "evaluate": (x, y)}.get(first_call, (x,))
    kwargs = {"verbose": 0} if first_call == "fit" else {}
    getattr(model, first_call)(*args, **kwargs)
    assert model.input_shape == (1, 6, 6) and model.output_shape == (3,)
    if first_call != "fit":                           # the same seed gives the same weights
        assert all(np.array_equal(a, b) for a, b in zip(weights(model), weights(reference)))


def test_fit_keeps_the_models_optimizer(tmp_path):
    x, y = toy_data(24)
    model = small_net()
    model.fit(x, y, epochs=1, batch_size=8, optimizer=SGD(0.02, momentum=0.9), verbose=0)
    first = model.optimizer
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)              # an earlier fit's
    assert model.optimizer is first and first.steps == 6
    model.save(tmp_path / "m.safetensors")
    loaded = portacnn.load(tmp_path / "m.safetensors")
    restored = loaded.optimizer
    loaded.fit(x, y, epochs=1, batch_size=8, verbose=0)             # restored by load
    assert loaded.optimizer is restored and restored.steps == 9
    assert (restored.lr, restored.momentum) == (0.02, 0.9)
    fresh = small_net()
    fresh.fit(x, y, epochs=1, batch_size=8, verbose=0)              # none yet: plain SGD
    assert type(fresh.optimizer) is SGD and fresh.optimizer.lr == 0.01
    assert fresh.optimizer.momentum == 0.0


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_checkpoints_get_the_mode_the_umask_gives(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        path = ten_classes().save(tmp_path / "m.safetensors")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == mode
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]   # no temporary left


def test_threads_above_the_core_count_are_capped_with_a_warning(capsys):
    cores = os.cpu_count() or 1
    assert _threads(cores + 62) == cores
    assert capsys.readouterr().err.strip() == (
        f"warning: --threads {cores + 62} is more than this machine's {cores} core(s); "
        f"using {cores}")
    assert _threads(1) == 1 and capsys.readouterr().err == ""


# --- progress in a log ---------------------------------------------------------------------
def test_progress_in_a_log_is_plain_lines(monkeypatch):
    from portacnn.training.progress import Progress

    x, y = toy_data(40)
    out = io.StringIO()                                 # not a terminal
    small_net().fit(x, y, epochs=2, batch_size=8, verbose=1, file=out)
    assert "\r" not in out.getvalue()
    assert [line.split(":")[0] for line in out.getvalue().splitlines()] == ["epoch 1/2",
                                                                           "epoch 2/2"]
    monkeypatch.setattr(Progress, "EVERY_S", 0.0)                  # a long epoch
    out = io.StringIO()
    small_net().fit(x, y, epochs=1, batch_size=8, verbose=1, file=out)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and len(lines) == 5
    for i, line in enumerate(lines[:4], 1):             # the last batch: the epoch line
        assert re.fullmatch(rf"epoch 1/1: {i}/5 batches, loss \d\.\d{{4}}, accuracy "
                            r"\d\.\d{4}", line), line
    assert lines[4].startswith("epoch 1/1: loss ")


@contextlib.contextmanager
def _captured():
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        yield out, err


def run_cli(*args):
    """``python -m portacnn train ARGS`` in this process: (exit status, stdout, stderr)."""
    with _captured() as (out, err):
        try:
            code = main(["train", *args])
        except SystemExit as exc:                       # argparse's errors
            code = exc.code
    return code, out.getvalue(), err.getvalue()


def test_a_piped_training_run_logs_plain_lines_and_hints():
    code, out, err = run_cli("--epochs", "1", "--lr", "100")
    assert "\r" not in out + err
    assert "lower the learning rate" in err                   # a warning, or the NaN error
    if code == 0:
        epoch = [line for line in out.splitlines() if "val_accuracy" in line]
        assert len(epoch) == 1 and epoch[0].startswith("epoch 1/1: loss ")
        assert re.search(r"^warning: training is diverging", err, re.M)
    else:
        assert code == 2 and "training diverged" in err


# --- the command line refuses bad options before training ----------------------------------
def _a_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not a directory")
    return path


def _a_fifo(tmp_path, name="pipe"):
    path = tmp_path / name
    os.mkfifo(path)
    return path


def _a_plots_folder_with_a_fifo(tmp_path):
    _a_fifo(tmp_path, "history.png")
    return tmp_path


CLI_ERRORS = [
    ("--save onto a directory", lambda t: ["--save", str(t)],
     [r"--save \S+ is a directory: give a file name such as \S+lenet5.safetensors"]),
    ("--save inside a file", lambda t: ["--save", str(_a_file(t) / "m.safetensors")],
     [r"notes.txt is a file, not a directory"]),
    ("--plots onto a file", lambda t: ["--plots", str(_a_file(t))],
     [r"--plots \S+notes.txt is a file: --plots takes a directory"]),
    ("--download into a file", lambda t: ["--download", "--data", str(_a_file(t))],
     [r"--data \S+notes.txt is a file: give the directory to download MNIST into"]),
    ("--save onto a FIFO", lambda t: ["--save", str(_a_fifo(t))],
     [r"--save \S+pipe: \S+pipe is a FIFO, not a regular file"]),
    ("--plots over a FIFO", lambda t: ["--plots", str(_a_plots_folder_with_a_fifo(t))],
     [r"--plots \S+: \S+history\.png is a FIFO, not a regular file"]),
    # os.access says yes to root under /proc and /sys; creating a file there does not
    ("--save under /proc", lambda t: ["--save", "/proc/portacnn/m.safetensors"],
     [r"--save /proc/portacnn/m\.safetensors: cannot create files in /proc"]),
    ("--plots under /sys", lambda t: ["--plots", "/sys/portacnn-plots"],
     [r"--plots /sys/portacnn-plots: cannot create files in /sys"]),
    ("--download under /proc", lambda t: ["--download", "--data", "/proc/mnist"],
     [r"--data /proc/mnist: cannot create files in /proc"]),
    ("a negative seed", lambda t: ["--seed", "-1"],
     [r"argument --seed: must be an integer >= 0, got -1"]),
    ("an infinite learning rate", lambda t: ["--lr", "inf"],
     [r"argument --lr: must be positive and finite, got inf"]),
    ("a NaN learning rate", lambda t: ["--lr", "nan"],
     [r"argument --lr: must be positive and finite, got nan"]),
]


LINUX = pytest.mark.skipif(not Path("/proc/self").is_dir() or not Path("/sys").is_dir(),
                           reason="/proc and /sys are Linux's")


@pytest.mark.parametrize("argv,words", [
    pytest.param(a, w, id=what, marks=[LINUX] if "/proc" in what or "/sys" in what else [])
    for what, a, w in CLI_ERRORS])
def test_the_cli_refuses_bad_options_before_training(tmp_path, argv, words):
    code, out, err = run_cli(*argv(tmp_path), "--epochs", "50")
    assert code == 2
    assert out == ""                                    # nothing loaded, nothing trained
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("portacnn train: error: ")
    for pattern in words:
        assert re.search(pattern, lines[0]), (pattern, lines[0])


# --- data: one directory layout, and a clear offline error ---------------------------------
def test_download_and_data_agree_on_one_directory(server, tmp_path):
    url, handler = server
    files, hashes = mnist_registry(tmp_path)
    handler.files = {f"/m/{k}": v for k, v in files.items()}
    target = tmp_path / "D"
    assert download_mnist(target, mirrors=[url + "/m/"], files=hashes, progress=False,
                          timeout=5) == target
    assert sorted(p.name for p in target.iterdir()) == sorted(files)   # in D itself
    (x, y), _ = load_mnist(target)                     # what --data D reads
    assert x.shape == (12, 28, 28)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("name,files,use", [
    ("mnist", "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz",
     "--data DIR (load_mnist(DIR)"),
    ("fashion-mnist", "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz",
     "--dataset fashion-mnist --data DIR (load_fashion_mnist(DIR)"),
    ("cifar10", "cifar-10-binary.tar.gz from", "--dataset cifar10 --data DIR (load_cifar10(DIR)"),
])
def test_offline_download_says_the_network_is_unreachable_and_leaves_no_folder(tmp_path, name,
                                                                               files, use):
    pytest.importorskip("pooch", reason="pooch is not installed (portacnn[data])")
    from portacnn.data import DATASETS

    cache = tmp_path / "cache" / name
    with pytest.raises(DataError) as info:
        DATASETS[name].download(cache, mirrors=[f"http://127.0.0.1:{_closed_port()}/"],
                                progress=False, timeout=5)
    text = str(info.value)
    assert "\n" not in text
    assert re.search(r"the network is unreachable \(http://127.0.0.1:\d+/ \(cannot connect: "
                     r"Connection refused\)\)", text), text
    assert files in text and use in text, text
    assert list(tmp_path.iterdir()) == []                # no empty cache folder left


# --- the README -----------------------------------------------------------------------------
def _readme_section(title):
    text = (ROOT / "README.md").read_text()
    section = text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_the_readme_library_snippets_run_verbatim(tmp_path, monkeypatch):
    blocks = _readme_section("Use it as a library")
    assert len(blocks) == 5
    monkeypatch.chdir(tmp_path)                         # it saves lenet5.safetensors
    # One BLAS thread, as the CLI uses: two threads on a busy 2-core machine run 10x slower.
    with _captured(), get_backend("cpu").limit_threads(1):
        namespace = {}
        exec(compile(blocks[0], "README.md", "exec"), namespace)
        exec(compile(blocks[2], "README.md", "exec"), {})
    assert namespace["accuracy"] > 0.9
    assert namespace["probs"].shape == (1000, 10)
    assert (tmp_path / "lenet5.safetensors").is_file()
    # the ONNX export of the trained model, served by onnxruntime (where the extra is installed)
    if all(importlib.util.find_spec(m) for m in ("ndonnx", "onnx", "onnxruntime")):
        lenet_probs = namespace["probs"]
        exec(compile(blocks[1], "README.md", "exec"), namespace)
        np.testing.assert_allclose(namespace["probs"], lenet_probs, atol=1e-5)
    # the residual block, then its fit with augmentation, a schedule and callbacks, on ten
    # random CIFAR-shaped images (one batch an epoch)
    rng = np.random.default_rng(0)
    graph = {"x_train": rng.normal(size=(10, 3, 32, 32)).astype(np.float32),
             "y_train": rng.integers(0, 10, 10), "SGD": namespace["SGD"]}
    with _captured(), get_backend("cpu").limit_threads(1):
        exec(compile(blocks[3], "README.md", "exec"), graph)
        exec(compile(blocks[4], "README.md", "exec"), graph)
    assert graph["model"].num_params() == 9962 and (tmp_path / "best.safetensors").is_file()
