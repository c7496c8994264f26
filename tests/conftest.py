"""Shared fixtures: one ``backend`` fixture over every namespace portacnn supports.

numpy and array_api_strict always run (strict, pinned to the 2024.12 standard, proves the code
uses only the standard; its ``device1`` run catches arrays created on the default device).
torch and jax run where installed (jax with ``jax_enable_x64`` for the float64 cases: its
arrays are immutable, so it proves the kernels write into no existing array); cupy only where
its smoke test passes on a CUDA device, otherwise it skips with the reason.
``PORTACNN_TEST_BACKENDS=numpy,torch`` narrows the matrix.
"""

import os

import numpy as np
import pytest

from portacnn.backends import DeviceError, get_backend

try:
    import array_api_strict

    array_api_strict.set_array_api_strict_flags(api_version="2024.12")
except ImportError:  # pragma: no cover - it is in the test extra
    array_api_strict = None

ALL_BACKENDS = ["numpy", "array_api_strict", "strict-device1", "torch", "jax", "cupy"]
SELECTED = [b for b in os.environ.get("PORTACNN_TEST_BACKENDS", ",".join(ALL_BACKENDS)).split(",") if b]


def make_backend(name):
    """Build the backend named in the test matrix, or skip the test with the reason."""
    if name == "torch":
        pytest.importorskip("torch", reason="torch is not installed (optional backend)")
    if name == "jax":
        jax = pytest.importorskip("jax", reason="jax is not installed (optional backend)")
        jax.config.update("jax_enable_x64", True)
    if name == "cupy":
        pytest.importorskip("cupy", reason="cupy is not installed", exc_type=ImportError)
        try:
            return get_backend("cupy")            # runs the smoke test on the device
        except DeviceError as exc:
            pytest.skip(str(exc))
    if name == "strict-device1":
        return get_backend("array_api_strict", device=array_api_strict.Device("device1"))
    return get_backend(name)


@pytest.fixture(params=SELECTED)
def backend(request):
    """Every backend in the matrix (heavier tests use ``core_backend``)."""
    return make_backend(request.param)


@pytest.fixture(params=[b for b in SELECTED if b != "strict-device1"])
def core_backend(request):
    """numpy, array_api_strict, torch, cupy: the matrix without the second strict device."""
    return make_backend(request.param)


TOL = {"float64": 1e-10, "float32": 1e-4}


def assert_close(actual, expected, dtype="float64", scale=None):
    """Compare to a host reference with a tolerance relative to the reference's magnitude."""
    from portacnn.backends import to_numpy

    actual = to_numpy(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    ref = scale if scale is not None else max(float(np.max(np.abs(expected), initial=0.0)), 1.0)
    err = float(np.max(np.abs(actual - expected), initial=0.0)) / ref
    assert err <= TOL[dtype], f"relative error {err:.3g} > {TOL[dtype]:g}"


@pytest.fixture
def host_rng():
    return np.random.default_rng(1234)


@pytest.fixture
def hide_module(monkeypatch):
    """``hide_module("torch")``: imports of that package (and its submodules) raise ImportError
    for the rest of the test, as on a machine where it is not installed."""
    import builtins

    real_import = builtins.__import__

    def hide(package):
        def fake_import(name, *args, **kwargs):
            if name == package or name.startswith(package + "."):
                raise ImportError(f"{package} is hidden by the test")
            return real_import(name, *args, **kwargs)

        monkeypatch.setattr(builtins, "__import__", fake_import)

    return hide
