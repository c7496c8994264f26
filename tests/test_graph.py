"""Graph models (issue 20): the merging layers against naive loops and PyTorch, and
``portacnn.Model``: one SGD step against PyTorch, gradients summed where a tensor feeds two
layers, save / load across backends, the summary and the errors."""

import io

import numpy as np
import pytest

import portacnn
from portacnn import kernels as K
from portacnn import reference as R
from portacnn import (Add, Concatenate, Conv2D, Dense, Flatten, Identity, Input, MaxPool2D, Model,
                      ReLU, Sequential, Tanh)
from portacnn.backends import to_numpy
from portacnn.model import rebuild
from portacnn.optim import SGD

from helpers import assert_close


# --- kernels and layers ---------------------------------------------------------------------

@pytest.mark.parametrize("axis", [1, 2, -1])
def test_concatenate_matches_loops(backend, host_rng, axis):
    xs = [host_rng.normal(size=(2, c, 3, 4)) for c in (1, 3)] if axis == 1 else \
         [host_rng.normal(size=(2, 2, 3, 4)) for _ in range(3)]
    y, sizes = K.concatenate_forward([backend.asarray(x) for x in xs], axis)
    assert_close(y, R.concatenate(xs, axis % 4))
    dy = host_rng.normal(size=tuple(y.shape))
    for ours, theirs in zip(K.concatenate_backward(backend.asarray(dy), sizes, axis),
                            R.concatenate_backward(dy, sizes, axis % 4), strict=True):
        assert_close(ours, theirs)


def test_add_matches_loops(backend, host_rng):
    xs = [host_rng.normal(size=(2, 3, 2, 2)) for _ in range(3)]
    assert_close(K.add_forward([backend.asarray(x) for x in xs]), R.add(xs))
    dy = backend.asarray(host_rng.normal(size=(2, 3, 2, 2)))
    assert [d is dy for d in K.add_backward(dy, 3)] == [True] * 3


def test_merge_layers_match_torch_autograd(core_backend, host_rng, torch):
    a, b = host_rng.normal(size=(2, 2, 3, 3)), host_rng.normal(size=(2, 3, 3, 3))
    ta, tb = (torch.tensor(v, requires_grad=True) for v in (a, b))
    ty = torch.cat([ta, tb[:, :2] + ta], dim=1)           # concatenate(a, add(b[:, :2], a))
    dy = host_rng.normal(size=tuple(ty.shape))
    ty.backward(torch.tensor(dy))
    add, cat = Add(dtype="float64"), Concatenate(1, dtype="float64")
    xa, xb = core_backend.asarray(a), core_backend.asarray(b[:, :2])
    y = cat([xa, add([xb, xa])])
    assert_close(y, ty.detach().numpy())
    da, dsum = cat.backward(core_backend.asarray(dy))
    db, da2 = add.backward(dsum)
    assert_close(core_backend.to_numpy(da) + core_backend.to_numpy(da2), ta.grad.numpy())
    assert_close(db, tb.grad.numpy()[:, :2])
    assert Identity()(xa) is xa


def test_merge_layers_refuse_bad_inputs(host_rng):
    a, b = host_rng.normal(size=(2, 2, 3, 3)), host_rng.normal(size=(2, 3, 3, 3))
    with pytest.raises(ValueError, match=r"Add adds tensors of one shape, got \(N, 2, 3, 3\) "
                                         r"and \(N, 3, 3, 3\)"):
        Add()([a, b])
    with pytest.raises(ValueError, match="joins along axis 2 tensors equal in every other axis"):
        Concatenate(axis=2)([a, b])
    with pytest.raises(TypeError, match=r"call it on a list of two or more, Add\(\)\(\[a, b\]\)"):
        Add()(a)
    with pytest.raises(ValueError, match="0 is the batch axis"):
        Concatenate(axis=0)
    with pytest.raises(ValueError, match="axis 4 is not a non-batch axis"):
        Concatenate(axis=4)([a, a])
    with pytest.raises(TypeError, match="build the network as a graph, portacnn.Model"):
        Sequential([Add()])


# --- Model against PyTorch ------------------------------------------------------------------

def _residual(seed=0):
    """conv - relu (h) - conv, + h (h feeds the conv and the sum), relu, dense."""
    x = Input((2, 4, 4))
    h = ReLU()(Conv2D(3, 3, padding="same")(x))
    out = Dense(3)(Flatten()(ReLU()(Add()([Conv2D(3, 3, padding="same")(h), h]))))
    return Model(x, out, dtype="float64", seed=seed)


def _torch_residual(torch, w, x):
    def conv(t, i):
        return torch.nn.functional.conv2d(t, w[f"{i}.weight"], w[f"{i}.bias"], padding=1)
    h = conv(x, 0).relu()
    return torch.nn.functional.linear((conv(h, 2) + h).relu().flatten(1), w["6.weight"],
                                      w["6.bias"])


def _branching(seed=0):
    """The input feeds two branches (3x3 conv - relu, 1x1 conv - tanh), joined along the
    channels, max-pooled, then dense. (The residual network's shapes where they can be: JAX
    compiles each operation once per shape.)"""
    x = Input((2, 4, 4))
    a = ReLU()(Conv2D(3, 3, padding="same")(x))
    b = Tanh()(Conv2D(2, 1)(x))
    out = Dense(3)(Flatten()(MaxPool2D(2)(Concatenate()([a, b]))))
    return Model(x, out, dtype="float64", seed=seed)


def _torch_branching(torch, w, x):
    F = torch.nn.functional
    a = F.conv2d(x, w["0.weight"], w["0.bias"], padding=1).relu()
    b = F.conv2d(x, w["2.weight"], w["2.bias"]).tanh()
    y = F.max_pool2d(torch.cat([a, b], dim=1), 2)
    return F.linear(y.flatten(1), w["7.weight"], w["7.bias"])


@pytest.mark.parametrize("make, oracle", [(_residual, _torch_residual),
                                          (_branching, _torch_branching)],
                         ids=["residual", "branching"])
def test_one_sgd_step_matches_torch(core_backend, host_rng, torch, make, oracle):
    model = make().to(core_backend)
    shape = (4, *model.input_shape)
    x, y = host_rng.normal(size=shape), np.array([0, 2, 1, 2])
    w = {p.name: torch.tensor(to_numpy(p.value), requires_grad=True) for p in model.parameters()}
    loss = torch.nn.functional.cross_entropy(oracle(torch, w, torch.tensor(x)), torch.tensor(y))
    loss.backward()
    torch.optim.SGD(w.values(), lr=0.1).step()
    ours, _ = model.train_step(core_backend.asarray(x), core_backend.asarray(y), SGD(0.1))
    assert abs(float(ours) - loss.item()) <= 1e-9
    assert len(w) == len(model.parameters())
    for p in model.parameters():
        assert_close(p.value, w[p.name].detach().numpy())


def test_a_shared_layer_and_a_tensor_read_twice_sum_their_gradients(host_rng, torch):
    x = Input((2, 4, 4))
    conv = Conv2D(2, 3, padding="same")                   # called twice: one weight
    h = conv(ReLU()(conv(x)))
    model = Model(x, Dense(3)(Flatten()(Add()([h, h]))), dtype="float64")
    assert len(model.layers) == 5 and len(model.parameters()) == 4
    assert "shared" in model.summary(file=io.StringIO()).splitlines()[6]   # its second call
    xs, y = host_rng.normal(size=(3, 2, 4, 4)), np.array([0, 1, 2])
    w = {p.name: torch.tensor(to_numpy(p.value), requires_grad=True) for p in model.parameters()}
    F = torch.nn.functional

    def c(t):
        return F.conv2d(t, w["0.weight"], w["0.bias"], padding=1)
    th = c(c(torch.tensor(xs)).relu())
    loss = F.cross_entropy(F.linear((th + th).flatten(1), w["4.weight"], w["4.bias"]),
                           torch.tensor(y))
    loss.backward()
    model.backward(model.backend.kernels.softmax_cross_entropy(
        model.forward(model.backend.asarray(xs)), model.backend.asarray(y))[1])
    for p in model.parameters():
        assert_close(p.grad, w[p.name].grad.numpy())


def test_save_on_numpy_load_on_another_backend_predicts_the_same(core_backend, host_rng,
                                                                 tmp_path):
    model = _branching(seed=3)
    x, y = host_rng.normal(size=(6, 2, 4, 4)), np.arange(6) % 3
    model.fit(x, y, epochs=1, batch_size=3, optimizer=SGD(0.1, momentum=0.9), verbose=0)
    loaded = portacnn.load(model.save(tmp_path / "g.safetensors"), device=core_backend)
    assert isinstance(loaded, Model) and loaded.architecture() == model.architecture()
    assert_close(loaded.predict(x), to_numpy(model.predict(x)))
    assert loaded.optimizer.steps == 2 and set(loaded.optimizer.state) == {
        p.name for p in model.parameters()}


def test_summary_lists_each_call_with_its_inputs():
    text = _branching().summary(file=io.StringIO())
    lines = text.splitlines()
    assert lines[0].startswith("Model on numpy") and lines[0].endswith(
        "float64, input (N, 2, 4, 4)")
    assert lines[2].split() == ["Layer", "Settings", "Output", "shape", "Params", "Inputs"]
    rows = [line.split("  ") for line in lines[4:12]]
    rows = [[cell.strip() for cell in row if cell.strip()] for row in rows]
    assert rows[0] == ["0 Conv2D", "3@3x3, stride 1, pad same", "(N, 3, 4, 4)", "57", "input"]
    assert rows[2] == ["2 Conv2D", "2@1x1, stride 1, pad 0", "(N, 2, 4, 4)", "6", "input"]
    assert rows[4] == ["4 Concatenate", "axis 1", "(N, 5, 4, 4)", "0", "1 ReLU, 3 Tanh"]
    assert rows[7] == ["7 Dense", "20 -> 3", "(N, 3)", "63", "6 Flatten"]
    assert lines[-1] == "Total params: 126"


def test_feature_maps_are_drawn_for_a_graph(host_rng):
    viz = pytest.importorskip("portacnn.viz", reason="matplotlib is not installed")
    fig = viz.plot_feature_maps(_branching(), host_rng.normal(size=(2, 4, 4)))
    assert len(fig.axes) == 3 * (5 + 1)                # conv, conv, pool x (input + 5 maps)


# --- errors ---------------------------------------------------------------------------------

def test_graph_mistakes_are_named_with_the_fix():
    x, other = Input((2, 4, 4)), Input((2, 4, 4))
    h = Conv2D(2, 3, padding="same")(x)
    flat = Flatten()(x)
    with pytest.raises(TypeError, match="must be symbolic tensors, made by portacnn.Input"):
        Model(np.zeros((1, 2, 4, 4)), h)
    with pytest.raises(ValueError, match="Model takes one input and one output"):
        Model([x, other], h)
    with pytest.raises(ValueError, match="inputs must be portacnn.Input tensors; this one is "
                                         "the output of Conv2D"):
        Model(h, Flatten()(h))
    with pytest.raises(ValueError, match=r"depends on an Input \(N, 2, 4, 4\) besides the "
                                         "model's input"):
        Model(x, Add()([h, Conv2D(2, 1)(other)]))
    with pytest.raises(ValueError, match=r"the model's input \(N, 2, 4, 4\) is not used"):
        Model(x, Conv2D(2, 1)(other))
    with pytest.raises(ValueError, match="the model has no layers"):
        Model(x, x)
    shared = Dense(3)
    with pytest.raises(ValueError, match=r"Dense is called on \(N, 32\) and on \(N, 5\): a layer "
                                         "called more than once shares its weights"):
        Model(x, Add()([shared(flat), shared(Dense(5)(flat))]))
    with pytest.raises(ValueError, match=r"Conv2D cannot be called on \(N, 32\): Conv2D "
                                         r"expects \(C, H, W\) inputs"):
        Conv2D(2, 3)(flat)
    with pytest.raises(TypeError, match="called on symbolic tensors and a numpy array on cpu: "
                                        "in a graph every input comes from portacnn.Input"):
        Add()([h, np.zeros((1, 2, 4, 4))])
    with pytest.raises(TypeError, match="takes one tensor, got a list of 2: merge them first"):
        ReLU()([h, h])
    with pytest.raises(TypeError, match=r"call it on a list of two or more, Concatenate\(\)"):
        Concatenate()(h)
    with pytest.raises(TypeError, match="a SymbolicTensor holds no values"):
        np.asarray(h)
    with pytest.raises(TypeError, match="per-sample shape such as"):
        Input(3)
    model = _residual()
    with pytest.raises(TypeError, match="models do not nest"):
        model(Input((2, 4, 4)))
    with pytest.raises(RuntimeError, match="Model.backward called before forward"):
        model.backward(np.zeros((1, 3)))


def test_a_corrupted_graph_description_is_refused():
    arch = _residual().architecture()
    assert isinstance(rebuild(arch), Model)
    bad = {**arch, "calls": [*arch["calls"][:2], {"layer": 2, "inputs": [7]}, *arch["calls"][3:]]}
    with pytest.raises(ValueError, match=r"call 2 takes tensors \[7\]: each must be an earlier"):
        rebuild(bad)
    unused = {**arch, "layers": [*arch["layers"], {"type": "ReLU", "config": {}}]}
    with pytest.raises(ValueError, match="every layer called"):
        rebuild(unused)
