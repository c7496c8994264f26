"""Optimizer update rules: hand-computed steps, and torch.optim on the same numbers."""

import contextlib
import types

import numpy as np
import pytest

import portacnn
from portacnn import Dense, Flatten, Sequential
from portacnn.layers import Layer
from portacnn.optim import SGD, Adam, RMSprop, get_optimizer

from helpers import assert_close, small_net, toy_data


def _run(opt, backend, p0, grads):
    """Apply ``opt`` to one parameter for each gradient in ``grads``; return host values."""
    layer = Layer(dtype="float64")
    layer.params["weight"] = backend.asarray(np.array(p0, dtype=np.float64))
    out = []
    for g in grads:
        layer.grads["weight"] = backend.asarray(np.array(g, dtype=np.float64))
        opt.step(layer.parameters("0."))
        out.append(backend.to_numpy(layer.params["weight"]).copy())
    return out


def test_sgd_plain_momentum_nesterov_weight_decay_by_hand(core_backend):
    p, g1, g2 = [1.0, -2.0], [0.5, 0.25], [-1.0, 2.0]
    # plain: p - lr g
    s = _run(SGD(lr=0.1), core_backend, p, [g1])
    assert_close(s[0], [0.95, -2.025])
    # momentum 0.9: v1 = g1, v2 = 0.9 v1 + g2
    s = _run(SGD(lr=0.1, momentum=0.9), core_backend, p, [g1, g2])
    v2 = [0.9 * 0.5 - 1.0, 0.9 * 0.25 + 2.0]
    assert_close(s[1], [0.95 - 0.1 * v2[0], -2.025 - 0.1 * v2[1]])
    # Nesterov: step with g + mu v
    s = _run(SGD(lr=0.1, momentum=0.5, nesterov=True), core_backend, p, [g1])
    assert_close(s[0], [1.0 - 0.1 * (0.5 + 0.25), -2.0 - 0.1 * (0.25 + 0.125)])
    # weight decay adds wd * p to the gradient
    s = _run(SGD(lr=0.1, weight_decay=0.01), core_backend, p, [g1])
    assert_close(s[0], [1.0 - 0.1 * (0.5 + 0.01), -2.0 - 0.1 * (0.25 - 0.02)])


def test_adam_two_steps_by_hand(core_backend):
    lr, b1, b2, eps = 0.01, 0.9, 0.999, 1e-8
    p, grads = np.array([0.5, -1.0]), [np.array([0.2, -0.4]), np.array([-0.1, 0.3])]
    got = _run(Adam(lr=lr, betas=(b1, b2), eps=eps), core_backend, p, grads)
    m = v = np.zeros(2)
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p = p - lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
        assert_close(got[t - 1], p)
    # bias correction makes the first step lr * sign(g), short by lr * eps / |g| (~5e-10 here);
    # without it the step would be 10x smaller
    assert np.allclose(got[0], [0.5 - lr, -1.0 + lr], rtol=0, atol=1e-9)


def test_rmsprop_by_hand(core_backend):
    p, g = np.array([1.0, 2.0]), np.array([0.3, -0.6])
    got = _run(RMSprop(lr=0.01, alpha=0.9, eps=1e-8), core_backend, p, [g])
    v = 0.1 * g * g
    assert_close(got[0], p - 0.01 * g / (np.sqrt(v) + 1e-8))


@pytest.mark.parametrize("name,kwargs", [
    ("sgd", dict(lr=0.05, momentum=0.9, weight_decay=1e-3)),
    ("sgd", dict(lr=0.05, momentum=0.8, nesterov=True)),
    ("adam", dict(lr=0.01, weight_decay=1e-2)),
    ("rmsprop", dict(lr=0.01, momentum=0.5)),
])
def test_matches_torch_optim(core_backend, name, kwargs):
    torch = pytest.importorskip("torch", reason="torch is not installed (optional oracle)")
    rng = np.random.default_rng(3)
    p0 = rng.normal(size=(4, 3))
    grads = [rng.normal(size=(4, 3)) for _ in range(5)]
    ours = _run(get_optimizer(name, **kwargs), core_backend, p0, grads)
    tp = torch.tensor(p0, requires_grad=True)
    topt = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam,
            "rmsprop": torch.optim.RMSprop}[name]([tp], **kwargs)
    for step, g in enumerate(grads):
        tp.grad = torch.tensor(g)
        topt.step()
        assert_close(ours[step], tp.detach().numpy())


def test_bad_hyperparameters_are_refused():
    with pytest.raises(ValueError, match="learning rate must be a positive number"):
        SGD(lr=-1)
    with pytest.raises(ValueError, match="momentum must be in"):
        SGD(momentum=1.5)
    with pytest.raises(ValueError, match="Nesterov momentum needs momentum > 0"):
        SGD(nesterov=True)
    with pytest.raises(ValueError, match="betas must be in"):
        Adam(betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="unknown optimizer 'lbfgs'; choose one of sgd, adam"):
        get_optimizer("lbfgs")
    assert isinstance(get_optimizer({"name": "Adam", "lr": 0.1, "betas": [0.8, 0.9]}), Adam)


def _layers(backend, shapes, seed=0):
    rng = np.random.default_rng(seed)
    layers = []
    for shape in shapes:
        layer = Layer(dtype="float64")
        layer.params["weight"] = backend.asarray(rng.normal(size=shape))
        layers.append(layer)
    return layers


def _stepped_together(backend, shapes, fuse):
    """``_layers`` whose optimizer updates them all at once (``fuse``, the GPU's way) or one by
    one (the CPU's), and their parameters."""
    layers = _layers(backend, shapes)
    for layer in layers:
        layer.backend = types.SimpleNamespace(kernels=types.SimpleNamespace(fuse_updates=fuse),
                                              activate=contextlib.nullcontext)
    return layers, [p for i, layer in enumerate(layers) for p in layer.parameters(f"{i}.")]


@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "per-parameter"])
def test_one_update_over_all_parameters_equals_one_per_parameter(core_backend, fuse):
    """Several parameters of different shapes, stepped together (``fuse_updates``, the GPU's
    way) or one by one (the CPU's): the same values as each stepped alone; a parameter
    replaced between steps (as a load does) is gathered again."""
    shapes = [(3, 2), (4,), (2, 1, 3)]
    rng = np.random.default_rng(5)
    grads = [[rng.normal(size=s) for s in shapes] for _ in range(3)]
    together, params = _stepped_together(core_backend, shapes, fuse)
    opt = SGD(lr=0.1, momentum=0.9, weight_decay=0.01)
    alone = [(_layers(core_backend, shapes)[i], SGD(lr=0.1, momentum=0.9, weight_decay=0.01))
             for i in range(len(shapes))]
    for step, gs in enumerate(grads):
        if step == 2:                       # replace one value: the flat copy is stale now
            new = core_backend.asarray(np.full(shapes[1], 0.5))
            together[1].params["weight"] = new
            alone[1][0].params["weight"] = core_backend.asarray(np.full(shapes[1], 0.5))
        for p, g in zip(params, gs):
            p.grad = core_backend.asarray(g)
        opt.step(params)
        for (layer, single), g in zip(alone, gs):
            layer.grads["weight"] = core_backend.asarray(g)
            single.step(layer.parameters("0."))
        for layer, (single_layer, _) in zip(together, alone):
            assert_close(layer.params["weight"], core_backend.to_numpy(
                single_layer.params["weight"]))
    assert set(opt.state) == {"0.weight", "1.weight", "2.weight"}
    assert [tuple(opt.state[p.name]["momentum"].shape) for p in params] == shapes


def test_parameters_without_a_gradient_are_left_alone(core_backend):
    a, b = _layers(core_backend, [(2,), (3,)])
    before = core_backend.to_numpy(b.params["weight"]).copy()
    a.grads["weight"] = core_backend.asarray(np.ones(2))
    opt = Adam(lr=0.1)
    opt.step(a.parameters("a.") + b.parameters("b."))
    assert set(opt.state) == {"a.weight"}
    assert np.array_equal(core_backend.to_numpy(b.params["weight"]), before)


def _values(model):
    return [np.array(model.backend.to_numpy(p.value)) for p in model.parameters()]


ANOTHER_MODEL = (r"SGD\(lr=0.02.*\) already trains another model: its state \(momentum, step "
                 r"count\) belongs to that model's parameters.*each model its own optimizer.*"
                 r"get_optimizer\(optimizer.get_config\(\)\)")


def test_an_optimizer_belongs_to_the_model_it_first_trains(tmp_path):
    """Its momentum and step count are that model's: another model, of the same shapes or not,
    is refused before any update, with the way to get a fresh optimizer of the same settings;
    the first model keeps it across fits, a move to another device, and a save and load."""
    x, y = toy_data(24)
    opt = SGD(0.02, momentum=0.9)
    first = small_net()
    first.fit(x, y, epochs=1, batch_size=8, optimizer=opt, verbose=0)
    for second in (small_net(seed=1),                                   # the same shapes
                   Sequential([Flatten(), Dense(3)], input_shape=(1, 6, 6))):   # others
        before = _values(second)
        with pytest.raises(RuntimeError, match=ANOTHER_MODEL):
            second.fit(x, y, epochs=1, batch_size=8, optimizer=opt, verbose=0)
        with pytest.raises(RuntimeError, match=ANOTHER_MODEL):
            second.train_step(x[:8], y[:8], opt)
        assert second.optimizer is None and opt.steps == 3
        assert all(np.array_equal(a, b) for a, b in zip(before, _values(second)))
        second.fit(x, y, epochs=1, batch_size=8, optimizer=get_optimizer(opt.get_config()),
                   verbose=0)                                            # a fresh copy trains
    first.fit(x, y, epochs=1, batch_size=8, verbose=0)                  # its own, again
    first.to("array_api_strict")
    first.fit(x, y, epochs=1, batch_size=8, optimizer=opt, verbose=0)
    assert first.optimizer is opt and opt.steps == 9
    loaded = portacnn.load(first.save(tmp_path / "m.safetensors"))
    with pytest.raises(RuntimeError, match="already trains another model"):
        small_net().fit(x, y, epochs=1, batch_size=8, optimizer=loaded.optimizer, verbose=0)
    loaded.fit(x, y, epochs=1, batch_size=8, verbose=0)                  # the one it came with
    assert loaded.optimizer.steps == 12


@pytest.mark.parametrize("fuse, clipnorm", [(True, 0.5), (False, 0.5), (True, 100.0)],
                         ids=["fused", "per-parameter", "under-the-norm"])
def test_global_clipnorm_matches_torch_clip_grad_norm(core_backend, fuse, clipnorm):
    """Two parameters clipped together by their global norm, then SGD with momentum and weight
    decay: PyTorch's clip_grad_norm_ before its step, whichever way the update runs; the rate
    keeps the clipping through a save and load of the settings."""
    torch = pytest.importorskip("torch", reason="torch is not installed (optional oracle)")
    shapes = [(3, 2), (4,)]
    rng = np.random.default_rng(7)
    grads = [[rng.normal(size=s) for s in shapes] for _ in range(2)]
    layers, params = _stepped_together(core_backend, shapes, fuse)
    settings = dict(lr=0.1, momentum=0.9, weight_decay=0.01)
    opt = get_optimizer(SGD(**settings, global_clipnorm=clipnorm).get_config())
    theirs = [torch.tensor(core_backend.to_numpy(p.value), requires_grad=True) for p in params]
    torch_opt = torch.optim.SGD(theirs, **settings)
    for gs in grads:
        for p, t, g in zip(params, theirs, gs):
            p.grad, t.grad = core_backend.asarray(g), torch.tensor(g)
        opt.step(params)
        torch.nn.utils.clip_grad_norm_(theirs, clipnorm)
        torch_opt.step()
        for p, t in zip(params, theirs):
            assert_close(p.value, t.detach().numpy())
    assert opt.global_clipnorm == clipnorm
