import ast
import os
import subprocess
import sys

import numpy as np
import pytest

import portacnn
from portacnn.kernels import CpuKernels, Kernels
from portacnn.backends import (DeviceError, JaxBackend, NumpyBackend, StrictBackend,
                               TorchBackend, backend_of, get_backend, namespace, to_numpy)


def test_import_portacnn_imports_no_optional_library():
    code = ("import sys, portacnn; bad = [m for m in ('cupy', 'torch', 'matplotlib', 'tqdm') "
            "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_cpu_is_numpy():
    be = get_backend("cpu")
    assert be.name == "numpy" and be.device == "cpu"
    x = be.asarray([[1, 2]], dtype="float32")
    assert isinstance(x, np.ndarray) and x.dtype == np.float32


def test_environment_default(monkeypatch):
    monkeypatch.setenv("PORTACNN_DEVICE", "array_api_strict")
    assert get_backend().name == "array_api_strict"
    monkeypatch.setenv("PORTACNN_DEVICE", "tpu")
    with pytest.raises(DeviceError, match=r"unknown device 'tpu'.*valid devices: cpu, gpu"):
        get_backend()
    monkeypatch.delenv("PORTACNN_DEVICE")
    assert get_backend().name == "numpy"


@pytest.mark.parametrize("spec", ["tpu", "cuda:x", "metal", ""])
def test_unknown_device_lists_valid_ones(spec):
    with pytest.raises(DeviceError, match="valid devices: cpu, gpu, cuda, cuda:N"):
        get_backend(spec)


def test_gpu_without_cuda_says_what_to_do():
    try:
        import cupy  # noqa: F401
        has_cupy = True
    except ImportError:
        has_cupy = False
    if has_cupy:
        try:
            usable = cupy.cuda.is_available()
        except Exception:
            usable = False
        if usable:
            pytest.skip("a CUDA device is usable here: the error path cannot be exercised")
        with pytest.raises(DeviceError, match="no usable CUDA device"):
            get_backend("gpu")
    else:
        with pytest.raises(DeviceError, match=r'pip install "portacnn\[gpu\]"'):
            get_backend("gpu")
        with pytest.raises(DeviceError, match=r'pip install "portacnn\[gpu\]"'):
            get_backend("cuda:1")


def test_namespace_module_and_backend_passthrough():
    import array_api_strict

    be = get_backend(array_api_strict)
    assert be.name == "array_api_strict"
    assert get_backend(be) is be
    with pytest.raises(DeviceError, match="'os' is not an array-API namespace"):
        get_backend(os)


def test_each_library_is_served_by_its_own_class():
    assert type(get_backend("cpu")) is NumpyBackend
    assert type(get_backend("numpy")) is NumpyBackend
    assert type(get_backend("array_api_strict")) is StrictBackend
    assert type(get_backend("cpu").kernels) is CpuKernels
    assert type(get_backend("array_api_strict").kernels) is Kernels
    pytest.importorskip("torch", reason="torch is not installed (optional backend)")
    assert type(get_backend("torch")) is TorchBackend


def test_jax_gets_its_backend_by_name_module_and_array():
    jnp = pytest.importorskip("jax.numpy", reason="jax is not installed (optional backend)")
    be = get_backend("jax")
    assert type(be) is JaxBackend and be.name == "jax" and type(be.kernels) is not Kernels
    assert get_backend(jnp) == be
    x = be.asarray(np.arange(6.0).reshape(2, 3), dtype="float32")
    assert backend_of(x) == be and be.owns(x)
    assert np.array_equal(be.to_numpy(x * 2), np.arange(0.0, 12.0, 2.0).reshape(2, 3))


def test_a_device_from_the_environment_is_named_in_the_error(monkeypatch):
    monkeypatch.setenv("PORTACNN_DEVICE", "tpu")
    with pytest.raises(DeviceError, match=r"came from \$PORTACNN_DEVICE"):
        get_backend()
    with pytest.raises(DeviceError) as info:
        get_backend("tpu")                         # given explicitly: no mention of the variable
    assert "PORTACNN_DEVICE" not in str(info.value)


def test_rng_draws_identical_on_every_backend(core_backend):
    ref = get_backend("numpy").rng(7).normal((3, 4), dtype="float64")
    got = core_backend.rng(7).normal((3, 4), dtype="float64")
    assert np.array_equal(to_numpy(got), ref)
    assert not np.array_equal(to_numpy(core_backend.rng(8).normal((3, 4))), ref.astype("float32"))


def test_asarray_moves_between_backends(core_backend):
    strict = get_backend("array_api_strict")
    x = strict.asarray([[1.0, 2.0], [3.0, 4.0]], dtype="float64")
    y = core_backend.asarray(x)
    assert core_backend.owns(y)
    assert np.array_equal(core_backend.to_numpy(y), [[1.0, 2.0], [3.0, 4.0]])
    assert backend_of(y) == core_backend
    core_backend.synchronize()  # a no-op on the CPU, must not fail


def test_to_numpy_uses_the_conversion_of_the_arrays_class_without_making_a_backend(monkeypatch):
    torch = pytest.importorskip("torch", reason="torch is not installed (optional backend)")

    def create(cls, device=None):
        raise AssertionError("to_numpy made a backend")

    monkeypatch.setattr(TorchBackend, "create", classmethod(create))
    x = torch.ones(2, 3, requires_grad=True) * 2      # DLPack and np.asarray refuse it
    assert np.array_equal(to_numpy(x), np.full((2, 3), 2.0))
    strict = get_backend("array_api_strict")
    assert np.array_equal(strict.to_numpy(strict.asarray(x)), np.full((2, 3), 2.0))


def test_the_base_backend_names_no_array_library():
    import portacnn.backends.base as base

    tree = ast.parse(open(base.__file__).read())
    names = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    names |= {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    names |= {alias.name for node in ast.walk(tree)
              if isinstance(node, (ast.Import, ast.ImportFrom)) for alias in node.names}
    named = sorted(n for n in names for lib in ("cupy", "torch", "jax", "strict") if lib in n)
    assert not named, f"backends/base.py names libraries ({named}): give the class its own method"


def test_mixed_namespaces_named_at_the_boundary():
    import array_api_strict

    a = np.ones(3)
    b = array_api_strict.ones(3)
    with pytest.raises(TypeError, match="arrays from different libraries were mixed") as info:
        namespace(a, b)
    assert "numpy array on cpu" in str(info.value)
    assert "array_api_strict array" in str(info.value)
    be = get_backend("array_api_strict")
    with pytest.raises(TypeError, match=r"is a numpy array on cpu but the model is on "
                                        r"array_api_strict.*backend.asarray"):
        be.check(a, "the input")


def test_mixed_devices_named():
    import array_api_strict

    a = array_api_strict.ones(3)
    b = array_api_strict.ones(3, device=array_api_strict.Device("device1"))
    with pytest.raises(TypeError, match="different devices"):
        namespace(a, b)


def test_version_exposed():
    assert portacnn.__version__.count(".") == 2
