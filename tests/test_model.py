"""Sequential: shape inference, summary, fit / evaluate / predict, devices, and errors."""

import io

import numpy as np
import pytest

import portacnn
from portacnn import Conv2D, Dense, Flatten, MaxPool2D, ReLU, Sequential, get_backend
from portacnn.kernels import CpuKernels
from portacnn.models import lenet5
from portacnn.optim import SGD, Adam

from helpers import assert_close, small_net, toy_data


def test_lenet5_shapes_and_parameter_count():
    model = lenet5()
    assert model.output_shape == (10,)
    # 156 + 2,416 + 48,120 + 10,164 + 850, as torch.nn counts the same network
    assert model.num_params() == 61_706
    assert tuple(model.layers[0].params["weight"].shape) == (6, 1, 5, 5)
    assert tuple(model.layers[7].params["weight"].shape) == (120, 400)
    m32 = lenet5(input_shape=(1, 32, 32))
    assert m32.layers[0].padding == (0, 0) and m32.num_params() == 61_706
    relu = lenet5("relu", "max")
    assert isinstance(relu.layers[1], ReLU) and isinstance(relu.layers[2], MaxPool2D)
    with pytest.raises(ValueError, match="LeNet-5 takes 28x28 or 32x32 images, got 30x30"):
        lenet5(input_shape=(1, 30, 30))


def test_summary_lists_layers_shapes_and_total():
    out = io.StringIO()
    text = lenet5().summary(file=out)
    assert out.getvalue().strip() == text
    assert "conv1 (Conv2D)" in text and "6@5x5, stride 1, pad 2" in text
    assert "(N, 16, 5, 5)" in text and "48,120" in text
    assert text.rstrip().endswith("Total params: 61,706")


def test_shape_inference_reports_the_layer_that_does_not_fit():
    with pytest.raises(ValueError, match=r"layer 3 \(Dense\): .*put a Flatten layer before it"):
        Sequential([Conv2D(2, 3), ReLU(), MaxPool2D(2), Dense(3)], input_shape=(1, 8, 8))
    with pytest.raises(ValueError, match=r"layer 0 \(Conv2D\): kernel 5x5 is larger"):
        Sequential([Conv2D(2, 5)], input_shape=(1, 3, 3))
    model = Sequential(device="cpu").add(Conv2D(2, 3)).add(Flatten()).add(Dense(2))
    with pytest.raises(RuntimeError, match="the model is not built"):
        model.summary()
    model.build((3, 5, 5))
    assert model.layers[0].params["weight"].shape == (2, 3, 3, 3)


def test_fit_learns_and_reports_history():
    x, y = toy_data(90)
    model = small_net()
    out = io.StringIO()
    hist = model.fit(x, y, epochs=8, batch_size=16, optimizer=Adam(0.02),
                     validation_split=0.2, verbose=2, file=out)
    assert set(hist.history) == set(portacnn.History.KEYS)
    assert hist.epochs == 8 and all(len(v) == 8 for v in hist.history.values())
    assert hist["loss"][-1] < hist["loss"][0] * 0.5
    assert hist["val_accuracy"][-1] >= 0.9
    assert "epoch 8/8: loss" in out.getvalue() and "images/s" in out.getvalue()
    # evaluate agrees with the last validation figures (same data, same weights)
    loss, acc = model.evaluate(x[72:], y[72:])
    assert abs(loss - hist["val_loss"][-1]) < 1e-6 and acc == hist["val_accuracy"][-1]


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_is_shown_on_a_terminal_with_verbose_1():
    x, y = toy_data(40)
    out = Terminal()
    small_net().fit(x, y, epochs=1, batch_size=8, verbose=1, file=out)
    text = out.getvalue()
    assert "\repoch 1/1:" in text and "/5 [" in text and "epoch 1/1: loss" in text


def test_predict_gives_probabilities_and_matches_evaluate(core_backend):
    x, y = toy_data(30)
    model = small_net(device=core_backend)
    model.fit(x, y, epochs=3, batch_size=10, optimizer=Adam(0.02), verbose=0)
    probs = core_backend.to_numpy(model.predict(x, batch_size=7))
    assert probs.shape == (30, 3)
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    _, acc = model.evaluate(x, y)
    assert acc == pytest.approx(np.mean(probs.argmax(axis=1) == y))


def test_inputs_already_on_the_device_are_accepted(core_backend):
    x, y = toy_data(24)
    model = small_net(device=core_backend)
    xd, yd = core_backend.asarray(x), core_backend.asarray(y)
    h_dev = model.fit(xd, yd, epochs=2, batch_size=8, optimizer=SGD(0.1), verbose=0, seed=3)
    model2 = small_net(device=core_backend)
    h_host = model2.fit(x, y, epochs=2, batch_size=8, optimizer=SGD(0.1), verbose=0, seed=3)
    assert h_dev["loss"] == pytest.approx(h_host["loss"], rel=1e-5)


def test_eval_mode_turns_dropout_off():
    x, _ = toy_data(10)
    model = small_net(dropout=True)
    model.eval()
    a = model.forward(x)
    b = model.forward(x)
    assert np.array_equal(a, b)
    model.train()
    assert not np.array_equal(model.forward(x), model.forward(x))


def _three_step_losses(backend, dtype="float64"):
    model = lenet5(device=backend, dtype=dtype, seed=5)
    from portacnn.data import load_sample, normalize

    (x, y), _ = load_sample()
    x = normalize(x[:48], dtype=dtype)
    opt = SGD(0.05, momentum=0.9)
    losses = []
    for i in range(3):
        xb = backend.asarray(x[i * 16:(i + 1) * 16])
        yb = backend.asarray(y[i * 16:(i + 1) * 16])
        loss, _ = model.train_step(xb, yb, opt)
        losses.append(float(loss))
    return losses, model


def test_three_training_steps_give_the_same_losses_on_every_backend(core_backend):
    ref, ref_model = _three_step_losses(get_backend("numpy"))
    got, model = _three_step_losses(core_backend)
    assert ref[2] < ref[0] or ref[1] < ref[0]      # it is learning, not standing still
    assert np.allclose(got, ref, rtol=1e-10, atol=0)
    assert_close(model.layers[0].params["weight"], ref_model.layers[0].params["weight"])


def test_to_moves_parameters_and_optimizer_state(core_backend):
    x, y = toy_data(24)
    model = small_net()
    model.fit(x, y, epochs=1, batch_size=8, optimizer=SGD(0.1, momentum=0.9), verbose=0)
    before = model.predict(x)
    model.to(core_backend)
    assert model.backend == core_backend
    assert core_backend.owns(model.layers[0].params["weight"])
    assert all(core_backend.owns(v) for s in model.optimizer.state.values() for v in s.values())
    assert_close(model.predict(core_backend.asarray(x)), before, dtype="float32")
    model.fit(x, y, epochs=1, batch_size=8, optimizer=model.optimizer, verbose=0)


def test_fit_reads_scalars_back_once_per_epoch_not_per_batch(monkeypatch):
    """On a device where a read stalls the queue, the batch loop must not read anything back."""
    import array_api_strict

    array_cls = type(array_api_strict.asarray(0.0))
    reads = {"n": 0}
    original = array_cls.__float__

    def counting_float(self):
        reads["n"] += 1
        return original(self)

    monkeypatch.setattr(array_cls, "__float__", counting_float)
    x, y = toy_data(64)
    model = small_net(device="array_api_strict")
    monkeypatch.setattr(model.backend, "host_sync_is_free", False)
    model.fit(x, y, epochs=2, batch_size=4, verbose=1, file=io.StringIO(),
              validation_data=(x[:16], y[:16]))
    # 16 batches per epoch: per-epoch reads are loss + accuracy, and evaluate's two
    assert reads["n"] == 2 * 4
    reads["n"] = 0
    model.predict(x, batch_size=4)
    assert reads["n"] == 0


def test_data_errors_at_the_boundary():
    import array_api_strict

    x, y = toy_data(12)
    model = small_net()
    with pytest.raises(ValueError, match=r"x has 12 samples but y has 5"):
        model.fit(x, y[:5], verbose=0)
    with pytest.raises(ValueError, match=r"x has shape \(12, 1, 5, 5\) but the model expects \(N, 1, 6, 6\)"):
        model.fit(x[:, :, :5, :5], y, verbose=0)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        model.fit(x, y, batch_size=0, verbose=0)
    with pytest.raises(ValueError, match="epochs must be a positive int"):
        model.fit(x, y, epochs=0, verbose=0)
    with pytest.raises(ValueError, match="give validation_data or validation_split, not both"):
        model.fit(x, y, validation_data=(x, y), validation_split=0.1, verbose=0)
    strict_x = array_api_strict.asarray(x)
    with pytest.raises(TypeError, match=r"x is a array_api_strict array .* but the model is on numpy"
                                        r".*model.backend.asarray"):
        model.predict(strict_x)
    with pytest.raises(TypeError, match=r"the model input is a array_api_strict array"):
        model.forward(strict_x)
    with pytest.raises(TypeError, match="the model is float32 but the input is float64"):
        model.forward(x.astype(np.float64))
    with pytest.raises(ValueError, match=r"x has no samples \(shape \(0, 1, 6, 6\)\)"):
        model.predict(x[:0])
    assert model.forward(x[:0]).shape == (0, 3)        # an empty batch flows through
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        Sequential(loss="hinge")


def test_checking_data_never_builds_the_model():
    from portacnn.training import checks

    x, y = toy_data(12)
    model = Sequential([Conv2D(4, 3, padding=1), ReLU(), MaxPool2D(2), Flatten(), Dense(3)])
    checks.check_arrays(model, x, y)
    assert not model.built
    with pytest.raises(RuntimeError, match="the model is not built"):
        checks.check_against_model(model, x, y)
    assert not model.built
    model.build_for(x)                                # the step the loop takes between them
    checks.check_against_model(model, x, y)
    with pytest.raises(ValueError, match=r"y\[1\] is 7 but the model has 3 classes"):
        checks.check_against_model(model, x, np.where(np.arange(12) == 1, 7, y))


def test_mse_model_trains_on_regression_targets():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 1, 4, 4)).astype(np.float32)
    target = x.reshape(32, -1)[:, :2] * 0.5
    model = Sequential([Flatten(), Dense(2)], input_shape=(1, 4, 4), loss="mse")
    hist = model.fit(x, target, epochs=30, batch_size=8, optimizer=SGD(0.1), verbose=0)
    assert hist["loss"][-1] < 0.1 * hist["loss"][0]
    assert "accuracy" not in hist.history
    loss, acc = model.evaluate(x, target)
    assert acc is None and loss < 0.01


def test_chunked_training_step_equals_the_whole_batch_step(monkeypatch):
    """CPU backends run big batches in cache-sized chunks; the update must not change."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(150, 1, 28, 28))
    y = rng.integers(0, 10, 150)
    results = []
    for chunk in (None, 64):                      # None: the plain whole-batch path (oracle)
        monkeypatch.setattr(CpuKernels, "train_chunk", chunk)
        model = lenet5(dtype="float64", seed=4)
        opt = SGD(0.05, momentum=0.9)
        losses = [float(model.train_step(x, y, opt)[0]) for _ in range(2)]
        results.append((losses, [np.array(p.value) for p in model.parameters()]))
    assert np.allclose(results[0][0], results[1][0], rtol=1e-12, atol=0)
    for whole, chunked in zip(results[0][1], results[1][1]):
        assert np.allclose(whole, chunked, rtol=1e-10, atol=1e-13)


def _spy_batch_sizes(model, calls):
    first = model.layers[0]
    first._forward = (lambda f: (lambda x: calls.append(x.shape[0]) or f(x)))(first._forward)


def test_batch_coupled_models_are_never_chunked(monkeypatch):
    calls = []
    monkeypatch.setattr(CpuKernels, "train_chunk", 4)
    for model in (lenet5("relu", "max", batchnorm=True), small_net(dropout=True)):
        _spy_batch_sizes(model, calls)
        shape = model.input_shape
        model.train_step(np.ones((10,) + shape, np.float32), np.zeros(10, np.int64), SGD(0.01))
    assert calls == [10, 10]                      # one whole-batch forward each
    model = small_net()
    _spy_batch_sizes(model, calls)
    model.train_step(np.ones((10, 1, 6, 6), np.float32), np.zeros(10, np.int64), SGD(0.01))
    assert calls[2:] == [3, 3, 4]                 # equal chunks of at most 4


def test_a_model_with_dropout_trains_after_moving_to_another_backend():
    x, y = toy_data(32)
    model = small_net(dropout=True)
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    model.to("array_api_strict")
    history = model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    assert np.isfinite(history["loss"][0])
    assert model.backend.name == "array_api_strict"


def test_parameters_and_buffers_are_made_once_when_the_model_is_built():
    """The optimizer, checkpoints and data parallelism share one set of Parameter objects."""
    model = lenet5("relu", "max", batchnorm=True, dtype="float64", seed=0)
    params, buffers = model.parameters(), model.buffers()
    assert [p.name for p in params][:3] == ["0.weight", "1.weight", "1.bias"]   # conv, BN
    assert {b.name for b in buffers} >= {"1.running_mean", "1.running_var"}
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(8, 1, 28, 28)), rng.integers(0, 10, 8)
    model.train_step(x, y, SGD(0.1, momentum=0.9))
    again = model.parameters()
    assert len(again) == len(params) and all(a is b for a, b in zip(again, params))
    assert all(a is b for a, b in zip(model.buffers(), buffers))
    # the objects see the arrays the step replaced (updates are functional)
    assert params[0].value is model.layers[0].params["weight"]
    assert buffers[0].value is model.layers[1].buffers["running_mean"]
    assert Sequential([Dense(3)]).parameters() == ()          # nothing before build


@pytest.mark.parametrize("first_call", ["fit", "predict", "evaluate", "forward", "build"])
@pytest.mark.parametrize("bad", ["no batch axis", "fails at a later layer"])
def test_a_failed_build_leaves_the_model_unbuilt(first_call, bad):
    """A first batch that cannot build the model (a single image without the batch axis; or
    3 channels of 1x1, which builds the convolution before the pooling refuses it) raises and
    leaves the model and every layer as they were: the next call with good data builds the
    model the bad call never touched."""
    x, y = toy_data(24)
    bad_x = x[0] if bad == "no batch axis" else np.ones((24, 3, 1, 1), np.float32)
    model = Sequential([Conv2D(4, 3, padding=1), ReLU(), MaxPool2D(2), Flatten(), Dense(3)])
    calls = {"fit": lambda x: model.fit(x, y, verbose=0),
             "evaluate": lambda x: model.evaluate(x, y),
             "build": lambda x: model.build(x.shape[1:])}
    call = calls.get(first_call, getattr(model, first_call))
    with pytest.raises(ValueError, match=r"layer [02] \((Conv2D|MaxPool2D)\)"):
        call(bad_x)
    assert not model.built and model.input_shape is None
    assert not any(layer.built or layer.params or layer.input_shape for layer in model.layers)
    assert model.layers[0].in_channels is None and model.layers[4].in_features is None
    call(x)
    assert model.input_shape == (1, 6, 6) and model.output_shape == (3,)
    if first_call != "fit":                   # the same weights as a model never given bad data
        reference = [np.asarray(p.value) for p in small_net().parameters()]
        assert all(np.array_equal(np.asarray(p.value), r)
                   for p, r in zip(model.parameters(), reference))


def test_a_layer_whose_build_fails_is_left_unbuilt():
    """An error while a layer creates its parameters (here: drawing the initial weights)
    leaves it unbuilt, not half built with no weights."""
    class FailingRNG:
        def uniform(self, *args, **kwargs):
            raise MemoryError("no room for the weights")

    conv = Conv2D(4, 3)
    with pytest.raises(MemoryError):
        conv.build((1, 6, 6), get_backend("cpu"), FailingRNG())
    assert not conv.built and conv.params == {} and conv.in_channels is None
    assert conv.input_shape is None
    assert conv.forward(np.ones((2, 1, 6, 6), np.float32)).shape == (2, 4, 4, 4)
