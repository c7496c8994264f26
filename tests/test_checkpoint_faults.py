"""Checkpoints against hostile files and paths (issue 22): declared sizes checked before anything
is allocated, malformed descriptions, optimizer state, special files, leftover temporaries."""

import json
import os
import socket
import stat
import subprocess
import sys
import textwrap
import time
import tracemalloc

import numpy as np
import pytest

import portacnn
from portacnn import CheckpointError, Dense, Flatten, Sequential, checkpoint
from portacnn.optim import SGD

from helpers import toy_data

pytest.importorskip("safetensors", reason="safetensors is a dependency")


def small_model(optimizer=None):
    """Flatten -> Dense(3) on (1, 2, 2) inputs, trained one step when given an optimizer."""
    model = Sequential([Flatten(), Dense(3)], input_shape=(1, 2, 2), seed=0)
    if optimizer is not None:
        x, y = toy_data(8)
        model.fit(np.ascontiguousarray(x[:, :, :2, :2]), y, epochs=1, batch_size=8, optimizer=optimizer,
                  verbose=0)
    return model


def forge(path, layers, tensors, input_shape=(4,), optimizer=None, metadata=None, **model):
    """A checkpoint file written by hand: ``layers`` is the description's layer list."""
    from safetensors.numpy import save_file

    desc = {"format": "portacnn", "format_version": 1,
            "model": {"class": "Sequential", "input_shape": (list(input_shape)
                                                             if isinstance(input_shape, tuple)
                                                             else input_shape),
                      "dtype": "float32", "loss": "cross_entropy", "seed": 0, "layers": layers,
                      **model},
            "optimizer": optimizer}
    save_file(tensors, str(path), metadata={"portacnn": metadata or json.dumps(desc)})
    return path


def stored(model, **changes):
    """The tensors ``model.save`` writes, with some replaced (a value of None removes one)."""
    tensors = checkpoint.model_tensors(model.parameters(), model.buffers(), model.optimizer)
    for name, value in changes.items():
        if value is None:
            tensors.pop(name)
        else:
            tensors[name] = value
    return tensors


def rewrite(model, path, optimizer=True, **changes):
    """Save ``model`` to ``path`` with its tensors changed as :func:`stored` does."""
    opt = model.optimizer if optimizer else None
    description = {"model": model.architecture(),
                   "optimizer": None if opt is None else {"config": opt.get_config(),
                                                          "steps": opt.steps}}
    checkpoint.write(path, stored(model, **changes), description)
    return path


# --- sizes are checked before anything is allocated ---------------------------------------
ONE = {"layers.0.weight": np.zeros((1, 1), np.float32), "layers.0.bias": np.zeros(1, np.float32)}

BOMBS = {
    # a 40 MB weight (plus its float64 draws) declared by a file of about 1 KB
    "a big Dense": ([{"type": "Dense", "config": {"out_features": 5000}}], (2000,)),
    # 4 TB: a bare MemoryError (or the OOM killer) before this was checked
    "an absurd Dense": ([{"type": "Dense", "config": {"out_features": 10 ** 6}}], (10 ** 6,)),
    # batch norm told its size is built by its constructor: 4 arrays of 40 MB
    "a big BatchNorm1D": ([{"type": "BatchNorm1D", "config": {"num_features": 10 ** 7}}],
                          (10 ** 7,)),
    "a BatchNorm1D told another size than its input's":
        ([{"type": "BatchNorm1D", "config": {"num_features": 10 ** 7}}], (1,)),
    "a Dense told another size than its input's":
        ([{"type": "Dense", "config": {"out_features": 1, "in_features": 10 ** 7}}], (1,)),
}


@pytest.mark.parametrize("layers,input_shape", BOMBS.values(), ids=list(BOMBS))
def test_declared_sizes_are_checked_against_the_file_before_anything_is_allocated(
        tmp_path, layers, input_shape):
    path = forge(tmp_path / "bomb.safetensors", layers, ONE, input_shape)
    assert path.stat().st_size < 1200
    portacnn.load(small_model().save(tmp_path / "ok.safetensors"))   # imports done first
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(CheckpointError, match=r"layers\.0\.|num_features|in_features"):
            portacnn.load(path)
        seconds = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert seconds < 1.0
    assert peak < 2 * 2 ** 20, f"{peak / 2 ** 20:.0f} MB allocated before the refusal"


def test_the_size_a_layer_was_told_must_be_its_inputs(tmp_path):
    path = forge(tmp_path / "m.safetensors",
                 [{"type": "Dense", "config": {"out_features": 1, "in_features": 5}}],
                 ONE, (1,))
    with pytest.raises(CheckpointError, match=r"layer 0 \(Dense\) was saved with "
                                              r"in_features=5 but its input has 1"):
        portacnn.load(path)


def test_declared_shapes_are_the_shapes_every_layer_builds():
    """load() checks the file against ``param_shapes`` / ``buffer_shapes`` before building:
    those must be what ``build`` then makes, for every layer class a checkpoint can name."""
    from portacnn.layers import LAYERS

    made = {
        "Conv2D": ((2, 6, 6), dict(out_channels=3, kernel_size=3)),
        "MaxPool2D": ((2, 6, 6), {}), "MinPool2D": ((2, 6, 6), {}),
        "AvgPool2D": ((2, 6, 6), {}), "Upsample2D": ((2, 6, 6), {}),
        "GlobalAvgPool2D": ((2, 6, 6), {}),
        "BatchNorm2D": ((2, 6, 6), {}), "BatchNorm1D": ((5,), {}),
        "Dense": ((5,), dict(out_features=4)), "Flatten": ((2, 6, 6), {}),
        "ReLU": ((5,), {}), "Tanh": ((5,), {}), "Sigmoid": ((5,), {}), "Dropout": ((5,), {}),
        "Add": ([(2, 6, 6), (2, 6, 6)], {}), "Concatenate": ([(2, 6, 6), (3, 6, 6)], {}),
        "Identity": ((5,), {}),
    }
    assert set(made) == set(LAYERS)
    for name, (shape, kwargs) in made.items():
        layer = LAYERS[name](**kwargs)
        declared = (layer.param_shapes(shape), layer.buffer_shapes(shape))
        layer.build(shape)
        built = ({k: tuple(v.shape) for k, v in layer.params.items()},
                 {k: tuple(v.shape) for k, v in layer.buffers.items()})
        assert declared == built, name


# --- malformed descriptions are CheckpointErrors, whatever their form ----------------------
def _deep(depth):
    return "[" * depth + "]" * depth


DESCRIPTIONS = {
    "JSON nested past the parser's depth":
        '{"format": "portacnn", "format_version": 1, "model": ' + _deep(100_000) + "}",
    "JSON nested just within it, as a kernel size":
        json.dumps({"format": "portacnn", "format_version": 1, "model": {
            "class": "Sequential", "input_shape": [1, 4, 4], "dtype": "float32",
            "loss": "cross_entropy", "seed": 0, "layers": [
                {"type": "MaxPool2D", "config": {}}]}}).replace("{}", '{"kernel_size": '
                                                                  + _deep(990) + "}"),
    "a layer config that is a list": {"layers": [{"type": "Dense", "config": [1]}]},
    "a layer that is a string": {"layers": ["Dense"]},
    "an infinite input size": {"input_shape": [float("inf")]},
    "a negative input size": {"input_shape": [-4]},
    "a fractional input size": {"input_shape": [4.5]},
    "an input shape that is a number": {"input_shape": 4},
    "an unknown dtype": {"dtype": "float16"},
    "an unknown loss": {"loss": "hinge"},
    "a seed that is a string": {"seed": "zero"},
    "a layer's seed that is a string":
        {"layers": [{"type": "Dense", "config": {"out_features": 1, "seed": "zero"}}],
         "input_shape": (1,)},
    "no layers": {"layers": []},
    "a model that is a list": "model-list",
}


@pytest.mark.parametrize("change", DESCRIPTIONS.values(), ids=list(DESCRIPTIONS))
def test_a_malformed_description_is_a_checkpoint_error(tmp_path, change):
    layers = [{"type": "Dense", "config": {"out_features": 1}}]
    path = tmp_path / "m.safetensors"
    if isinstance(change, str) and change.startswith("{"):
        forge(path, layers, ONE, metadata=change)
    elif change == "model-list":
        forge(path, layers, ONE, metadata=json.dumps({"format": "portacnn",
                                                     "format_version": 1, "model": [1, 2]}))
    else:
        change = dict(change)
        layers = change.pop("layers", layers)
        forge(path, layers, ONE, **change)
    with pytest.raises(CheckpointError, match=r"m\.safetensors: the (model description|"
                                              r"architecture)"):
        portacnn.load(path)


@pytest.mark.parametrize("settings", [
    {"config": {"name": "SGD", "lr": 0.1}, "steps": -3},
    {"config": {"name": "SGD", "lr": 0.1}, "steps": 2.5},
    {"config": {"name": "SGD", "lr": 0.1}, "steps": float("inf")},
    {"config": [1], "steps": 0},
    {"config": {"name": "Adam", "betas": [[0.9]]}, "steps": 0},
    {"config": {"name": "SGD", "lr": 0.1, "momentum": {}}, "steps": 0},
    "SGD",
], ids=["negative steps", "fractional steps", "infinite steps", "a list as config",
        "nested betas", "a dict as momentum", "a string"])
def test_malformed_optimizer_settings_are_a_checkpoint_error(tmp_path, settings):
    path = forge(tmp_path / "m.safetensors", [{"type": "Dense", "config": {"out_features": 1}}],
                 ONE, optimizer=settings)
    with pytest.raises(CheckpointError, match="the optimizer settings are corrupted"):
        portacnn.load(path)


# --- the tensors: exactly the declared ones, of the model's dtype --------------------------
def test_extra_tensors_and_wrong_dtypes_are_refused(tmp_path):
    model = small_model(SGD(0.1, momentum=0.9))
    path = tmp_path / "m.safetensors"
    f32, f64 = np.zeros(3, np.float32), np.zeros(3, np.float64)
    cases = [
        ({"layers.1.extra": f32}, r"unexpected \['layers\.1\.extra'\]"),
        ({"layers.7.weight": f32}, r"unexpected \['layers\.7\.weight'\]"),
        ({"layers.1.bias": f64}, r"layers\.1\.bias is float64\(3,\) but the architecture "
                                 r"needs float32\(3,\)"),
        ({"layers.1.bias": np.zeros(3, np.int32)}, r"layers\.1\.bias is int32"),
        ({"stray": f32}, r"'stray' is neither a layer's tensor \(layers\.\*\) nor the "
                         r"optimizer's \(optimizer\.\*\)"),
    ]
    for changes, message in cases:
        rewrite(model, path, **changes)
        with pytest.raises(CheckpointError, match=message):
            portacnn.load(path)


def test_optimizer_tensors_without_optimizer_settings_are_refused(tmp_path):
    model = small_model(SGD(0.1, momentum=0.9))
    path = rewrite(model, tmp_path / "m.safetensors")
    desc, tensors = checkpoint.read(path)
    desc["optimizer"] = None
    checkpoint.write(path, tensors, {k: v for k, v in desc.items()
                                     if k not in ("format", "format_version")})
    with pytest.raises(CheckpointError, match=r"optimizer state optimizer\.1\.\w+\.momentum "
                                              r"but no optimizer settings"):
        portacnn.load(path)


OPTIMIZER_STATES = {
    "a slot of another shape": (SGD(0.1, momentum=0.9), "optimizer.1.weight.momentum",
                                np.zeros((3, 5), np.float32),
                                r"optimizer\.1\.weight\.momentum is float32\(3, 5\) but its "
                                r"parameter needs float32\(3, 4\)"),
    "a slot of another dtype": (SGD(0.1, momentum=0.9), "optimizer.1.bias.momentum",
                                np.zeros(3, np.float64),
                                r"optimizer\.1\.bias\.momentum is float64\(3,\) but its "
                                r"parameter needs float32\(3,\)"),
    "a slot Adam keeps, under SGD": (SGD(0.1, momentum=0.9), "optimizer.1.bias.exp_avg",
                                     np.zeros(3, np.float32),
                                     r"optimizer\.1\.bias\.exp_avg: SGD keeps no slot "
                                     r"'exp_avg' \(it keeps 'momentum'\)"),
    "momentum under SGD without momentum": (SGD(0.1), "optimizer.1.bias.momentum",
                                            np.zeros(3, np.float32),
                                            r"SGD keeps no slot 'momentum' \(it keeps none\)"),
    "a slot naming no parameter": (SGD(0.1, momentum=0.9), "optimizer.1.gamma.momentum",
                                   np.zeros(3, np.float32),
                                   r"optimizer state optimizer\.1\.gamma\.momentum names no "
                                   r"parameter"),
}


@pytest.mark.parametrize("optimizer,name,value,message", OPTIMIZER_STATES.values(),
                         ids=list(OPTIMIZER_STATES))
def test_optimizer_state_is_checked_at_load(tmp_path, optimizer, name, value, message):
    model = small_model(optimizer)
    path = rewrite(model, tmp_path / "m.safetensors", **{name: value})
    with pytest.raises(CheckpointError, match=message):
        portacnn.load(path)


def test_every_slot_an_optimizer_keeps_is_one_it_names():
    """The slot names load() accepts are the ones each optimizer's step writes."""
    from portacnn.optim import Adam, RMSprop

    for optimizer in (SGD(0.1), SGD(0.1, momentum=0.5), Adam(), RMSprop(),
                      RMSprop(momentum=0.5)):
        model = small_model(optimizer)
        kept = {slot for slots in optimizer.state.values() for slot in slots}
        assert kept == set(optimizer.slot_names()), optimizer


# --- paths: special files, directories, files where folders must be -----------------------
def _fifo(tmp_path):
    path = tmp_path / "pipe"
    os.mkfifo(path)
    return path


def _socket(tmp_path):
    path = tmp_path / "sock"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.close()
    return path


def _device_link(tmp_path):
    path = tmp_path / "null.safetensors"
    path.symlink_to("/dev/null")
    return path


SPECIAL = {"a FIFO": (_fifo, "a FIFO"), "a socket": (_socket, "a socket"),
           "a link to /dev/null": (_device_link, "a character device")}


@pytest.mark.parametrize("make,kind", SPECIAL.values(), ids=list(SPECIAL))
def test_save_never_replaces_a_special_file(tmp_path, make, kind):
    path = make(tmp_path)
    before = os.lstat(path)
    with pytest.raises(CheckpointError, match=rf"{path.name} is {kind}, not a regular file"):
        small_model().save(path)
    after = os.lstat(path)
    assert (after.st_mode, after.st_ino) == (before.st_mode, before.st_ino)
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


@pytest.mark.parametrize("make,kind", SPECIAL.values(), ids=list(SPECIAL))
def test_load_names_a_special_file(tmp_path, make, kind):
    path = make(tmp_path)
    with pytest.raises(CheckpointError, match=rf"{path.name} is {kind}, not a checkpoint file"):
        portacnn.load(path)


def test_load_of_a_directory_says_it_is_one(tmp_path):
    small_model().save(tmp_path / "a.safetensors")
    with pytest.raises(CheckpointError, match=r"is a directory, not a checkpoint file: give "
                                              r"the file's path, such as \S+a\.safetensors"):
        portacnn.load(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"is a directory, not a checkpoint file"):
        portacnn.load(tmp_path / "empty")


@pytest.mark.parametrize("under", ["notes.txt/m.safetensors", "notes.txt/sub/m.safetensors"])
def test_save_under_a_file_names_that_file(tmp_path, under):
    (tmp_path / "notes.txt").write_text("not a directory")
    with pytest.raises(CheckpointError, match=r"notes\.txt is a file, not a directory"):
        small_model().save(tmp_path / under)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


# --- temporaries of interrupted saves -------------------------------------------------------
WRITER = textwrap.dedent("""
    import os, sys, time
    import portacnn
    from portacnn import Dense, Flatten, Sequential
    def stop(src, dst):                # the moment before the rename: killed, or still writing
        if sys.argv[2] == "die":
            os._exit(9)
        print("writing", flush=True)
        time.sleep(120)
    os.replace = stop
    Sequential([Flatten(), Dense(3)], input_shape=(1, 2, 2)).save(sys.argv[1])
""")


def _temporaries(directory):
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def test_a_save_removes_the_temporaries_of_dead_writers_and_only_those(tmp_path):
    path = tmp_path / "m.safetensors"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}

    def killed_save():
        res = subprocess.run([sys.executable, "-c", WRITER, str(path), "die"], env=env,
                             timeout=120)
        assert res.returncode == 9

    killed_save()
    first = _temporaries(tmp_path)
    assert len(first) == 1 and not path.exists()
    live = subprocess.Popen([sys.executable, "-c", WRITER, str(path), "live"], env=env,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert live.stdout.readline() == "writing\n"        # its temporary is complete
        writing = _temporaries(tmp_path)
        assert len(writing) == 1 and writing != first       # the killed save's is gone
        killed_save()                                       # keeps the live writer's
        dead = sorted(set(_temporaries(tmp_path)) - set(writing))
        assert len(dead) == 1
        other = tmp_path / f".other.safetensors.{dead[0].split('.', 3)[3]}"
        other.write_bytes(b"")                              # another target's: not ours
        users = [tmp_path / ".m.safetensors.notes.tmp", tmp_path / ".m.safetensors.x.y.tmp"]
        hours_ago = time.time() - 7200
        for user in users:                                  # not of portacnn's making
            user.write_bytes(b"")
            os.utime(user, (hours_ago, hours_ago))
        small_model().save(path)
        assert _temporaries(tmp_path) == sorted([*writing, other.name,
                                                 *(u.name for u in users)])
    finally:
        live.kill()
        live.wait()


def test_a_save_removes_temporaries_older_than_an_hour_whoever_wrote_them(tmp_path):
    path = tmp_path / "m.safetensors"
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, timeout=60)
    pid = int(ended.stdout)                     # no such process here: but on that machine?
    names = [".m.safetensors.abcd_123.tmp",                  # before pids were in the name
             f".m.safetensors.{pid}-0badf00d.abcdefgh.tmp"]  # another machine's writer
    for name in names:
        (tmp_path / name).write_bytes(b"x" * 100)
    small_model().save(path)
    assert _temporaries(tmp_path) == sorted(names)           # recent: perhaps being written
    hour_ago = time.time() - 3700
    for name in names:
        os.utime(tmp_path / name, (hour_ago, hour_ago))
    small_model().save(path)
    assert _temporaries(tmp_path) == []
    assert stat.S_ISREG(path.stat().st_mode)
