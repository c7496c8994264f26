"""The training loop's bookkeeping, watched from inside: which rows reach a training forward and
in what order, which labels go with them, what each figure fit reports is the mean of, when a
NaN or infinite loss stops training, and what evaluate / predict compute at any batch size.

A :class:`Spy` wraps the first layer's forward and the loss kernel of a model. Its inputs carry
their row number in one pixel (:func:`id_data`), so every batch that reaches a forward is known
by its rows; the loss kernel's calls show the targets and logits of every training batch, from
which the epoch's figures are computed again here.
"""

import io
import math
import re
import warnings

import numpy as np
import pytest

import portacnn
from portacnn import Dense, Flatten, Sequential
from portacnn.kernels import CpuKernels
from portacnn.optim import SGD, Adam
from portacnn.training.progress import Divergence, Progress

from helpers import small_net, toy_data

SCALE = 16          # row i carries i / SCALE in pixel (0, 0, 0): exact in float32


def id_data(n, seed=0):
    """:func:`helpers.toy_data` whose row ``i`` holds ``i / SCALE`` in pixel (0, 0, 0), a
    pixel the classes' patterns leave alone."""
    x, y = toy_data(n, seed)
    x[:, 0, 0, 0] = np.arange(n) / SCALE
    return x, y


class Spy:
    """Records what reaches ``model`` (from :func:`id_data`): ``train`` and ``infer``, the row
    numbers of each forward in training and in eval mode; ``losses``, one ``(mean loss, logits,
    targets)`` per call of the loss kernel in training mode (host copies). ``poison=(k,
    value)``: the k-th training loss (from 0) becomes ``value``, its gradient unchanged."""

    def __init__(self, model, monkeypatch, poison=None):
        self.train, self.infer, self.losses = [], [], []
        first, to_host = model.layers[0], model.backend.to_numpy
        forward = first._forward
        training = [True]                   # the mode of the last forward

        def spy_forward(x):
            ids = np.rint(to_host(x)[:, 0, 0, 0] * SCALE).astype(int)
            training[0] = first.training
            (self.train if first.training else self.infer).append(ids)
            return forward(x)

        first._forward = spy_forward
        kernels = type(model.backend.kernels)
        name = "softmax_cross_entropy" if model.loss_name == "cross_entropy" else "mse"
        loss_fn = getattr(model.backend.kernels, name)

        def spy_loss(logits, targets):
            loss, grad = loss_fn(logits, targets)
            if training[0]:                 # not evaluate's
                if poison is not None and len(self.losses) == poison[0]:
                    loss = loss * 0 + poison[1]       # the loss only: the weights stay finite
                self.losses.append((float(loss), to_host(logits), to_host(targets)))
            return loss, grad

        monkeypatch.setattr(kernels, name, staticmethod(spy_loss))

    def epochs(self, rows):
        """The row numbers of the training forwards, one array per epoch of ``rows`` rows."""
        seen = np.concatenate(self.train)
        assert seen.size % rows == 0, seen.size
        return seen.reshape(-1, rows)


# --- the order of the rows ---------------------------------------------------------------------

@pytest.mark.parametrize("staging", ["batches-moved", "data-on-device", "x-given-on-device"])
def test_each_epoch_trains_every_row_once_in_a_new_order_that_the_seed_repeats(
        core_backend, monkeypatch, staging):
    """``batches-moved``: each batch is gathered on the host and moved (the CPU's way);
    ``data-on-device``: the data set is moved once and each epoch gathered there in its order
    (a GPU's); ``x-given-on-device``: x is gathered on the device batch by batch, y on the
    host."""
    x, y = id_data(23)

    def run(**kwargs):
        model = small_net(device=core_backend)
        model.backend.device_data_limit = 2**30 if staging == "data-on-device" else None
        spy = Spy(model, monkeypatch)
        xs = core_backend.asarray(x) if staging == "x-given-on-device" else x
        model.fit(xs, y, epochs=3, batch_size=5, verbose=0, **kwargs)
        for (_, _, targets), ids in zip(spy.losses, spy.train):
            assert np.array_equal(targets, y[ids])                 # labels go with their rows
        assert [ids.size for ids in spy.train] == [5, 5, 5, 5, 3] * 3   # the partial batch too
        return spy.epochs(23)

    epochs = run(seed=7)
    for order in epochs:
        assert sorted(order) == list(range(23))                    # every row once
        assert list(order) != list(range(23))
    assert len({tuple(order) for order in epochs}) == 3            # a new order each epoch
    assert np.array_equal(run(seed=7), epochs)                     # the seed repeats them
    assert not np.array_equal(run(seed=8)[0], epochs[0])
    assert all(list(order) == list(range(23)) for order in run(seed=7, shuffle=False))


def test_chunked_batches_train_the_same_rows_with_their_labels(monkeypatch):
    """The CPU runs a batch as chunks (here of at most 2 rows): the same rows, in the same
    order, with their labels, and the same epoch loss as whole batches."""
    x, y = id_data(23)
    runs = []
    for chunk in (None, 2):
        monkeypatch.setattr(CpuKernels, "train_chunk", chunk)
        model = small_net(dtype="float64")
        spy = Spy(model, monkeypatch)
        history = model.fit(x, y, epochs=2, batch_size=5, optimizer=SGD(0.1, momentum=0.9),
                            verbose=0, seed=3)
        for (_, _, targets), ids in zip(spy.losses, spy.train):
            assert np.array_equal(targets, y[ids])
        runs.append((spy, history, [np.array(p.value) for p in model.parameters()]))
    (whole, h_whole, w_whole), (chunked, h_chunked, w_chunked) = runs
    assert [ids.size for ids in chunked.train[:5]] == [1, 2, 2, 1, 2]     # 5 -> 1+2+2, 3 -> 1+2
    assert np.array_equal(whole.epochs(23), chunked.epochs(23))
    assert h_chunked["loss"] == pytest.approx(h_whole["loss"], rel=1e-12)
    assert h_chunked["accuracy"] == h_whole["accuracy"]
    for a, b in zip(w_whole, w_chunked):
        assert np.allclose(a, b, rtol=1e-10, atol=1e-13)


def test_validation_split_rows_never_reach_a_training_forward(monkeypatch):
    """A quarter of 23 rows, 5.75, rounds to the last 6: they are evaluated after each epoch
    and never trained on. Those rows are poison (bright, with labels against the pattern):
    were one trained on, the weights would differ from a run on the first 17 rows alone."""
    x, y = id_data(23)
    x[17:, 0, 2:, 1:] += 3.0
    y[17:] = (y[17:] + 1) % 3
    model = small_net()
    spy = Spy(model, monkeypatch)
    history = model.fit(x, y, epochs=2, batch_size=4, validation_split=0.25,
                        optimizer=SGD(0.1, momentum=0.9), verbose=0)
    for order in spy.epochs(17):
        assert sorted(order) == list(range(17))
    assert [list(ids) for ids in spy.infer] == [list(range(17, 23))] * 2   # once per epoch
    alone = small_net()
    alone.fit(x[:17], y[:17], epochs=2, batch_size=4, optimizer=SGD(0.1, momentum=0.9),
              verbose=0)
    for a, b in zip(model.parameters(), alone.parameters()):
        assert np.array_equal(a.value, b.value), a.name
    loss, acc = model.evaluate(x[17:], y[17:])
    assert (history["val_loss"][-1], history["val_accuracy"][-1]) == pytest.approx((loss, acc))


# --- what fit reports --------------------------------------------------------------------------

def test_the_epoch_figures_are_means_over_every_row_and_the_lines_show_them(monkeypatch):
    """loss and accuracy: the mean over the epoch's rows of what the training batches computed
    (the last, partial batch weighing its 3 rows); images_per_s: training rows per second; the
    validation figures: evaluate's. One line per epoch shows them all."""
    x, y = id_data(23)
    model = small_net()
    spy = Spy(model, monkeypatch)
    out = io.StringIO()
    history = model.fit(x, y, epochs=2, batch_size=5, optimizer=SGD(0.2, momentum=0.9),
                        validation_data=(x[:7], y[:7]), verbose=2, file=out)
    assert set(history.history) == set(portacnn.History.KEYS) and history.epochs == 2
    for epoch in range(2):
        batches = spy.losses[5 * epoch:5 * epoch + 5]
        rows = sum(t.size for _, _, t in batches)
        assert rows == 23
        loss = sum(mean * t.size for mean, _, t in batches) / rows
        hits = sum(int(np.sum(np.argmax(z, axis=1) == t)) for _, z, t in batches)
        assert history["loss"][epoch] == pytest.approx(loss, rel=1e-5)
        assert history["accuracy"][epoch] == pytest.approx(hits / rows, abs=1e-6)
        assert history["images_per_s"][epoch] * history["seconds"][epoch] == pytest.approx(23)
    assert history["loss"][0] != history["loss"][1]
    assert (history["val_loss"][-1], history["val_accuracy"][-1]) == pytest.approx(
        model.evaluate(x[:7], y[:7]))
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    for epoch, line in enumerate(lines):
        h = {key: values[epoch] for key, values in history.history.items()}
        assert line == (f"epoch {epoch + 1}/2: loss {h['loss']:.4f}, accuracy "
                        f"{h['accuracy']:.4f}, val_loss {h['val_loss']:.4f}, val_accuracy "
                        f"{h['val_accuracy']:.4f}, {h['seconds']:.2f} s, "
                        f"{h['images_per_s']:,.0f} images/s")


def test_one_hot_rows_train_and_score_like_their_integer_labels():
    x, y = toy_data(23)
    x[::2] *= 0.2                                           # some rows predicted wrongly
    one_hot = np.eye(3, dtype=np.float32)[y]
    runs = []
    for labels in (y, one_hot):
        model = small_net()
        history = model.fit(x, labels, epochs=2, batch_size=5, optimizer=SGD(0.05), verbose=0,
                            validation_data=(x, labels))
        figures = {k: history[k] for k in ("loss", "accuracy", "val_loss", "val_accuracy")}
        runs.append((figures, model.evaluate(x, labels, batch_size=5)))
    (ints, ints_eval), (rows, rows_eval) = runs
    assert 0 < ints["accuracy"][0] < 1 and 0 < ints_eval[1] < 1
    for key, values in ints.items():
        assert rows[key] == pytest.approx(values, rel=1e-6), key
    assert rows_eval == pytest.approx(ints_eval, rel=1e-6)


def test_an_mse_history_has_no_accuracy_and_weighs_every_row(monkeypatch):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(13, 1, 4, 4)).astype(np.float32)
    x[:, 0, 0, 0] = np.arange(13) / SCALE
    target = x.reshape(13, -1)[:, 1:3] * 0.5
    model = Sequential([Flatten(), Dense(2)], input_shape=(1, 4, 4), loss="mse")
    spy = Spy(model, monkeypatch)
    out = io.StringIO()
    history = model.fit(x, target, epochs=1, batch_size=4, optimizer=SGD(0.05),
                        validation_data=(x, target), verbose=2, file=out, shuffle=False)
    assert set(history.history) == {"loss", "val_loss", "seconds", "images_per_s"}
    h = {key: values[0] for key, values in history.history.items()}
    assert out.getvalue() == (f"epoch 1/1: loss {h['loss']:.4f}, val_loss {h['val_loss']:.4f}, "
                              f"{h['seconds']:.2f} s, {h['images_per_s']:,.0f} images/s\n")
    assert [t.shape[0] for _, _, t in spy.losses] == [4, 4, 4, 1]
    assert history["loss"][0] == pytest.approx(
        sum(mean * t.shape[0] for mean, _, t in spy.losses) / 13, rel=1e-5)
    assert history.epochs == 1
    loss, acc = model.evaluate(x, target, batch_size=5)
    assert acc is None and loss == pytest.approx(history["val_loss"][0], rel=1e-6)
    out = model.backend.to_numpy(model.predict(x))
    assert loss == pytest.approx(float(np.mean((out - target) ** 2)), rel=1e-5)


def test_running_figures_in_a_log_are_the_means_so_far(monkeypatch):
    """With a progress line after every batch, each shows the mean loss and accuracy over the
    rows trained so far this epoch, and the epoch's last batch is left to the epoch line."""
    monkeypatch.setattr(Progress, "EVERY_S", 0.0)
    seen = []
    batch_done = Progress.batch_done
    monkeypatch.setattr(Progress, "batch_done", lambda self, i, loss, hits, rows: (
        seen.append(rows), batch_done(self, i, loss, hits, rows))[1])
    x, y = id_data(23)
    model = small_net()
    spy = Spy(model, monkeypatch)
    out = io.StringIO()
    model.fit(x, y, epochs=1, batch_size=5, optimizer=SGD(0.2, momentum=0.9), verbose=1,
              file=out)
    assert seen == [5, 10, 15, 20, 23]                     # what a bar shows at the end too
    lines = out.getvalue().splitlines()
    assert len(lines) == 5 and lines[4].startswith("epoch 1/1: loss ")
    for i, line in enumerate(lines[:4]):
        batches = spy.losses[:i + 1]
        rows = sum(t.size for _, _, t in batches)
        loss = sum(mean * t.size for mean, _, t in batches) / rows
        acc = sum(int(np.sum(np.argmax(z, axis=1) == t)) for _, z, t in batches) / rows
        shown = re.fullmatch(rf"epoch 1/1: {i + 1}/5 batches, loss (\S+), accuracy (\S+)", line)
        assert shown, line
        assert float(shown[1]) == pytest.approx(loss, abs=1.5e-4), (line, loss)
        assert float(shown[2]) == pytest.approx(acc, abs=1.5e-4), (line, acc)


def test_fit_keeps_its_optimizer_and_defaults_to_plain_sgd():
    x, y = toy_data(12)
    model = small_net()
    model.fit(x, y, batch_size=4, verbose=0)
    assert type(model.optimizer) is SGD and model.optimizer.get_config() == {
        "name": "SGD", "lr": 0.01, "weight_decay": 0.0, "momentum": 0.0, "nesterov": False}
    adam = Adam(0.01)
    model.fit(x, y, batch_size=4, optimizer=adam, verbose=0)
    assert model.optimizer is adam and adam.steps == 3


# --- a loss that is NaN or infinite ------------------------------------------------------------

class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=str)
@pytest.mark.parametrize("where,batches,stops_after", [
    ("epoch-end", 6, 6),            # verbose=0: read once, at the end of the epoch
    ("log-lines", 6, 3),            # a progress line after each batch reads the running loss
    ("progress-bar", 30, 20),       # the bar reads it every 20th batch
])
def test_a_nan_or_infinite_loss_stops_training_naming_the_epoch(monkeypatch, bad, where,
                                                                  batches, stops_after):
    """The third training batch's loss is ``bad`` (only the loss: the weights stay finite).
    Training stops at the next read of the loss, within the first of two epochs."""
    x, y = toy_data(4 * batches)
    model = small_net()
    Spy(model, monkeypatch, poison=(2, bad))
    optimizer = SGD(0.01)
    kwargs = {"epoch-end": dict(verbose=0), "log-lines": dict(verbose=1, file=io.StringIO()),
              "progress-bar": dict(verbose=1, file=Terminal())}[where]
    monkeypatch.setattr(Progress, "EVERY_S", 0.0)
    with pytest.raises(FloatingPointError) as info:
        model.fit(x, y, epochs=2, batch_size=4, optimizer=optimizer, **kwargs)
    assert re.search(rf"the loss became {bad} in epoch 1/2", str(info.value)), str(info.value)
    assert optimizer.steps == stops_after


@pytest.mark.parametrize("loss", [math.nan, math.inf, -math.inf, 1e39], ids=str)
def test_the_divergence_check_refuses_every_non_finite_loss(loss):
    divergence = Divergence(2, SGD(0.5), 8, classes=10, hint=False)
    if math.isfinite(loss):
        divergence.after_epoch(loss, 1, None)               # large, but a number
        return
    for check in (divergence.check, divergence.after_epoch):
        with pytest.raises(FloatingPointError, match=rf"the loss became {loss} in epoch 1/2 "
                                                     r"\(SGD\(lr=0.5.*lr=0.05"):
            check(loss, 1, None)


def test_the_divergence_hint_comes_above_three_uniform_guesses_once_per_fit():
    guess = math.log(10)                                    # a uniform guess over 10 classes
    divergence = Divergence(3, SGD(0.5), 8, classes=10, hint=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        divergence.after_epoch(3 * guess * 0.99, 1, None)
    with pytest.warns(RuntimeWarning, match=r"the loss is 6.9\d+ after epoch 2/3, far above the "
                                            r"2.30 of a uniform guess"):
        divergence.after_epoch(3 * guess * 1.01, 2, None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        divergence.after_epoch(100.0, 3, None)              # once per fit
        Divergence(1, SGD(0.5), 8, classes=10, hint=False).after_epoch(100.0, 1, None)


def test_a_regression_loss_gets_no_hint_however_large():
    """The hint compares the loss with a uniform guess over classes: MSE has no classes."""
    x = toy_data(12)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        history = _mse_net().fit(x, np.full((12, 2), 100.0, np.float32), epochs=1, verbose=0)
    assert history["loss"][0] > 1000


# --- evaluate, predict and the model's mode ----------------------------------------------------

@pytest.mark.parametrize("chunk", [None, 4], ids=["whole", "chunks-of-4"])
def test_evaluate_and_predict_equal_one_forward_at_any_batch_size(core_backend, monkeypatch,
                                                                  chunk):
    """Oracle: one eval-mode forward of all 23 rows, softmax and cross-entropy in float64 on
    the host. Batches of 1, 5 and 23 rows, with inference chunks of at most 4 or none."""
    monkeypatch.setattr(type(core_backend.kernels), "infer_chunk", chunk)
    x, y = toy_data(23)
    x[::2] *= 0.2                                           # some rows predicted wrongly
    model = small_net(device=core_backend)
    model.eval()
    logits = core_backend.to_numpy(model.forward(core_backend.asarray(x))).astype(np.float64)
    model.train()
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    loss = float(np.mean(-np.log(probs[np.arange(23), y])))
    acc = float(np.mean(probs.argmax(axis=1) == y))
    assert 0 < acc < 1
    for batch_size in (1, 5, 23, 256):
        got = core_backend.to_numpy(model.predict(x, batch_size=batch_size))
        assert np.allclose(got, probs, rtol=1e-5, atol=1e-6), batch_size
        assert model.evaluate(x, y, batch_size=batch_size) == pytest.approx((loss, acc),
                                                                             rel=1e-5)
    assert model.training                                   # the mode it was in


def test_fit_trains_in_training_mode_and_inference_keeps_the_callers_mode():
    x, y = toy_data(24)
    model = small_net(dropout=True)
    model.eval()
    model.fit(x, y, epochs=1, batch_size=8, verbose=0, validation_data=(x, y))
    assert model.training                                   # fit leaves it ready to train
    for mode in (False, True):
        model.train(mode)
        first = model.backend.to_numpy(model.predict(x))
        model.evaluate(x, y)
        assert model.training is mode
        assert np.array_equal(first, model.backend.to_numpy(model.predict(x)))  # no dropout


# --- targets the loss cannot use ---------------------------------------------------------------

def _mse_net():
    return Sequential([Flatten(), Dense(2)], input_shape=(1, 6, 6), loss="mse")


@pytest.mark.parametrize("call,words", [
    (lambda x: small_net().fit(x, np.array([[1.5, -0.5, 0.0]] * 6, np.float32), verbose=0),
     r"y\[0\] is not a one-hot row \(its entries must be >= 0 and sum to 1, got sum 1\)"),
    (lambda x: _mse_net().fit(x, np.where(np.arange(12).reshape(6, 2) == 7, np.nan,
                                          np.zeros((6, 2), np.float32)), verbose=0),
     r"y\[3\] holds NaN or infinity \(1 of 6 samples"),
    (lambda x: _mse_net().evaluate(x, np.full((6, 2), -np.inf, np.float32)),
     r"y\[0\] holds NaN or infinity \(6 of 6 samples"),
], ids=["one-hot-row-with-a-negative-entry", "nan-mse-target", "infinite-mse-targets"])
def test_targets_the_loss_cannot_use_are_refused_before_training(call, words):
    with pytest.raises(ValueError, match=words):
        call(toy_data(6)[0])
