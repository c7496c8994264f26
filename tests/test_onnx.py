"""ONNX export by tracing (portacnn.model.onnx_export) and the ONNX kernel set.

Every shipped network exported with a symbolic batch size runs in onnxruntime equal to
``predict``; each ONNX operator the kernel set emits equals the portable kernel it replaces,
traced; the portable inference kernels trace on a symbolic batch; a layer that cannot be
traced is named and nothing is written.
"""

import numpy as np
import pytest

ndx = pytest.importorskip("ndonnx", reason="ONNX export needs ndonnx: pip install 'portacnn[onnx]'")
onnx = pytest.importorskip("onnx", reason="ONNX export needs onnx: pip install 'portacnn[onnx]'")
ort = pytest.importorskip("onnxruntime", reason="checking exported files needs onnxruntime")

import portacnn  # noqa: E402
from portacnn import kernels as K  # noqa: E402
from portacnn.backends import get_backend  # noqa: E402
from portacnn.kernels import onnx_ops  # noqa: E402
from portacnn import OnnxExportError  # noqa: E402
from portacnn.cli import main  # noqa: E402
from portacnn.models import MODELS  # noqa: E402

from helpers import write_mnist  # noqa: E402


def concat_model():
    """A graph with two branches joined by Concatenate."""
    x = portacnn.Input((3, 8, 8))
    a = portacnn.ReLU()(portacnn.Conv2D(4, 3, padding=1)(x))
    b = portacnn.MaxPool2D(3, stride=1, padding=1)(x)
    h = portacnn.Dropout(0.5)(portacnn.Concatenate(axis=1)([a, b]))    # eval: the identity
    return portacnn.Model(x, portacnn.Dense(5)(portacnn.Flatten()(h)))


NETWORKS = {**{name: make for name, make in MODELS.items()}, "concat": concat_model}
# resnet20's untrained logits are in the hundreds (its softmax a one-hot): a small input keeps
# the probabilities away from 0 and 1, so that the comparison can fail.
INPUT_SCALE = {"resnet20": 0.01}


def session(path_or_proto):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    blob = path_or_proto if isinstance(path_or_proto, str) else path_or_proto.SerializeToString()
    return ort.InferenceSession(blob, options, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("name", NETWORKS)
def test_exported_networks_run_in_onnxruntime_equal_to_predict(name, tmp_path):
    model = NETWORKS[name]()
    path = str(model.export_onnx(tmp_path / "m.onnx"))
    proto = onnx.load(path)
    onnx.checker.check_model(proto)
    (inp,), (out,) = proto.graph.input, proto.graph.output
    assert inp.name == "input" and out.name == "probabilities"
    assert inp.type.tensor_type.shape.dim[0].dim_param == "N"          # a dynamic batch
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim[1:]] == list(model.input_shape)
    assert len(proto.graph.initializer) >= len(model.parameters())    # weights as initializers
    run = session(path)
    rng = np.random.default_rng(0)
    for n in (1, 7):
        x = (INPUT_SCALE.get(name, 1.0) * rng.standard_normal((n, *model.input_shape))
             ).astype(np.float32)
        expected = model.predict(x)
        assert 0.01 < expected.max() < 0.999                 # a comparison that can fail
        got, = run.run(None, {"input": x})
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    assert model.training                                    # the model is left as it was


def test_export_fixes_the_batch_and_names_mse_outputs(tmp_path):
    model = portacnn.Sequential([portacnn.Flatten(), portacnn.Dense(3)], input_shape=(2, 2),
                                loss="mse", dtype="float64")
    proto = onnx.load(str(model.export_onnx(tmp_path / "m.onnx", batch=4)))
    out = proto.graph.output[0]
    assert out.name == "outputs"
    assert [d.dim_value for d in out.type.tensor_type.shape.dim] == [4, 3]
    x = np.random.default_rng(0).standard_normal((4, 2, 2))
    got, = session(proto).run(None, {"input": x})
    np.testing.assert_allclose(got, model.predict(x), atol=1e-12)


def test_an_untraceable_layer_is_named_and_nothing_is_written(tmp_path):
    class HostRound(portacnn.Layer):             # leaves the namespace: cannot be traced
        def _forward(self, x):
            return self.backend.asarray(np.round(self.backend.to_numpy(x)))

    model = portacnn.Sequential([portacnn.Flatten(), HostRound(name="rounding"),
                                 portacnn.Dense(2)], input_shape=(1, 2, 2))
    before = model.layers[2].params["weight"]
    target = tmp_path / "m.onnx"
    target.write_bytes(b"an earlier export")
    with pytest.raises(OnnxExportError, match=r"rounding \(HostRound\) cannot be exported to "
                                              "ONNX: its forward failed on a traced ndonnx"):
        model.export_onnx(target)
    assert list(tmp_path.iterdir()) == [target] and target.read_bytes() == b"an earlier export"
    with pytest.raises(ValueError, match="batch"):
        model.export_onnx(target, batch=0)
    assert model.layers[2].params["weight"] is before and model.backend.name == "numpy"
    model.predict(np.zeros((1, 1, 2, 2), np.float32))          # still runs on NumPy


def traced(kernel, x, *consts, batch="N", **kwargs):
    """Run ``kernel(x, *consts, **kwargs)`` traced on ndonnx (``x`` an input of batch
    ``batch``, the others constants) in onnxruntime; a tuple result's first entry. The traced
    result must know every size but the batch."""
    arg = ndx.argument(shape=(batch, *x.shape[1:]), dtype=ndx.from_numpy_dtype(x.dtype))
    y = kernel(arg, *(None if c is None else ndx.asarray(c) for c in consts), **kwargs)
    y = y[0] if isinstance(y, tuple) else y
    got, = session(ndx.build({"x": arg}, {"y": y})).run(None, {"x": x})
    assert y.shape[1:] == got.shape[1:]          # static sizes survive a symbolic batch
    return got


CONV_CASES = [dict(stride=1, padding=0), dict(stride=2, padding=1), dict(padding="same"),
              dict(padding=1, padding_mode="replicate"), dict(stride=2, groups=2),
              dict(padding=(1, 2), bias=False)]


@pytest.mark.parametrize("case", CONV_CASES, ids=str)
def test_onnx_conv_equals_the_traced_portable_kernel(case, host_rng):
    case = dict(case)
    groups, bias = case.pop("groups", 1), case.pop("bias", True)
    x = host_rng.standard_normal((3, 4, 7, 8)).astype(np.float32)
    w = host_rng.standard_normal((6, 4 // groups, 3, 4)).astype(np.float32)
    b = host_rng.standard_normal(6).astype(np.float32) if bias else None
    args = dict(case, groups=groups, inference=True)
    native = traced(onnx_ops.conv2d_forward, x, w, b, **args)
    portable = traced(K.conv2d_forward, x, w, b, batch=3, **args)
    np.testing.assert_allclose(native, portable, atol=1e-5)
    np.testing.assert_allclose(native, K.conv2d_forward(x, w, b, **args)[0], atol=1e-5)


POOL_CASES = [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1),
              dict(kernel_size=3, stride=1, padding="same"),
              dict(kernel_size=3, stride=2, padding=1, padding_mode="replicate")]


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("case", POOL_CASES, ids=str)
def test_onnx_pooling_equals_the_traced_portable_kernel(kind, case, host_rng):
    x = host_rng.standard_normal((2, 3, 7, 6)).astype(np.float32)
    name = f"{kind}_pool2d_forward"
    native = traced(getattr(onnx_ops, name), x, inference=True, **case)
    portable = traced(getattr(K, name), x, batch=2, inference=True, **case)
    np.testing.assert_allclose(native, portable, atol=1e-6)
    np.testing.assert_allclose(native, getattr(K, name)(x, inference=True, **case)[0], atol=1e-6)


def test_onnx_dense_equals_the_traced_portable_kernel(host_rng):
    x, w, b = (host_rng.standard_normal(s).astype(np.float32) for s in ((5, 4), (3, 4), (3,)))
    for bias in (b, None):
        native = traced(onnx_ops.dense_forward, x, w, bias)
        np.testing.assert_allclose(native, traced(K.dense_forward, x, w, bias), atol=1e-6)
        np.testing.assert_allclose(native, K.dense_forward(x, w, bias), atol=1e-6)


def test_onnx_relu_and_softmax_equal_the_traced_portable_kernels(host_rng):
    x = host_rng.standard_normal((4, 3, 5)).astype(np.float32)
    np.testing.assert_array_equal(traced(onnx_ops.relu, x), traced(K.relu, x))
    for axis in (1, -1):
        native = traced(onnx_ops.softmax, x, axis=axis)
        np.testing.assert_allclose(native, traced(K.softmax, x, axis=axis), atol=1e-6)
        np.testing.assert_allclose(native, K.softmax(x, axis=axis), atol=1e-6)


def test_the_portable_inference_kernels_trace_on_a_symbolic_batch(host_rng):
    x = host_rng.standard_normal((3, 4, 6, 6)).astype(np.float32)
    w = host_rng.standard_normal((5, 4, 3, 3)).astype(np.float32)
    c = host_rng.random(4).astype(np.float32) + 0.5
    cases = {
        "conv2d, zero padding": (lambda a, w: K.conv2d_forward(a, w, padding=1, stride=2,
                                                               inference=True), (w,)),
        "avg_pool2d": (lambda a: K.avg_pool2d_forward(a, 3, 2, padding=1, inference=True), ()),
        "max_pool2d": (lambda a: K.max_pool2d_forward(a, 3, 2, padding=1, inference=True), ()),
        "global_avg_pool2d": (lambda a: K.global_avg_pool2d_forward(a, inference=True), ()),
        "batchnorm, eval": (lambda a, g, m, v: K.batchnorm_forward(a, g, g, m, v,
                                                                    training=False), (c, c, c)),
        "activations": (lambda a: K.softmax(K.tanh(K.relu(a)) + K.sigmoid(a), axis=1), ()),
        "upsample": (lambda a: K.upsample_nearest_forward(a, 2), ()),
        "add, concatenate": (lambda a: K.concatenate_forward([a, K.add_forward([a, a])]), ()),
    }
    for name, (kernel, consts) in cases.items():
        got = traced(kernel, x, *consts)
        expected = kernel(x, *consts)
        expected = expected[0] if isinstance(expected, tuple) else expected
        np.testing.assert_allclose(got, expected, atol=1e-5, err_msg=name)


def test_the_onnx_backend_is_registered_and_holds_constants():
    backend = get_backend("onnx")
    assert type(backend.kernels).__name__ == "OnnxKernels" and not backend.accelerator
    assert backend.to_numpy(backend.asarray(np.arange(3.0))).tolist() == [0.0, 1.0, 2.0]


def test_the_command_line_exports_the_trained_model(tmp_path, capsys):
    write_mnist(tmp_path / "digits", n_train=8, n_test=4)
    fast = ["train", "--epochs", "1", "--batch-size", "4", "--quiet", "--dataset",
            "fashion-mnist", "--data", str(tmp_path / "digits")]
    target = tmp_path / "out" / "lenet.onnx"
    assert main([*fast, "--export", str(target)]) == 0
    assert f"exported {target} (ONNX)" in capsys.readouterr().out
    got, = session(str(target)).run(None, {"input": np.zeros((2, 1, 28, 28), np.float32)})
    assert got.shape == (2, 10)
    assert main([*fast, "--export", str(tmp_path / "digits")]) == 2      # a directory
    err = capsys.readouterr().err
    assert f"--export {tmp_path / 'digits'}:" in err and "Traceback" not in err
