"""Shared fixtures: one ``backend`` fixture over every namespace portacnn supports.

numpy and array_api_strict always run (strict, pinned to the 2024.12 standard, proves the code
uses only the standard; its ``device1`` run catches arrays created on the default device).
torch and jax run where installed (jax with ``jax_enable_x64`` for the float64 cases: its
arrays are immutable, so it proves the kernels write into no existing array); cupy only where
its smoke test passes on a CUDA device, otherwise it skips with the reason.
``PORTACNN_TEST_BACKENDS=numpy,torch`` narrows the matrix (tests/helpers.py builds it).

Fixtures, and one reporting hook: the skips counted by reason at the end of a run, one line
per reason instead of one per test (``pytest -rs`` lists each). What tests share as functions
and data is in tests/helpers.py.
"""

import collections
import http.server
import threading

import numpy as np
import pytest

from helpers import SELECTED, MirrorHandler, make_backend

try:
    import array_api_strict
except ImportError:  # pragma: no cover - it is in the test extra
    pass
else:
    array_api_strict.set_array_api_strict_flags(api_version="2024.12")


@pytest.fixture(autouse=True, scope="session")
def one_blas_thread():
    """Every test's BLAS runs on one thread, whatever the machine's cores and load: two results
    a test compares come from one thread count (``fit``'s thread policy leaves a pool capped
    below the cores alone), and a loaded CI machine is not oversubscribed."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="blas"):
        yield


@pytest.fixture(params=SELECTED)
def backend(request):
    """Every backend in the matrix (heavier tests use ``core_backend``)."""
    return make_backend(request.param)


@pytest.fixture(params=[b for b in SELECTED if b != "strict-device1"])
def core_backend(request):
    """numpy, array_api_strict, torch, cupy: the matrix without the second strict device."""
    return make_backend(request.param)


@pytest.fixture
def host_rng():
    return np.random.default_rng(1234)


@pytest.fixture
def torch():
    """PyTorch as a test oracle: a test that asks for it skips where torch is not installed,
    and only that test."""
    return pytest.importorskip("torch", reason="torch is not installed (optional oracle)")


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


@pytest.fixture
def server(tmp_path):
    """A local MNIST mirror: ``(base URL, handler)``; set ``handler.files`` to what it serves
    ({URL path: bytes}, see :class:`helpers.MirrorHandler`), read ``handler.requests``."""
    pytest.importorskip("pooch", reason="pooch is not installed (portacnn[data])")
    MirrorHandler.files, MirrorHandler.requests = {}, []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), MirrorHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", MirrorHandler
    httpd.shutdown()
    httpd.server_close()


def skip_reason(report) -> str:
    """The reason a test skipped, as ``-rs`` prints it (without its file and line)."""
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return reason.removeprefix("Skipped: ")


def pytest_terminal_summary(terminalreporter):
    """Count the skips by reason, most first, before the failures' short summary and the final
    line; a missing optional library makes hundreds of skips with one reason."""
    skipped = terminalreporter.stats.get("skipped", [])
    if not skipped:
        return
    counts = collections.Counter(skip_reason(report) for report in skipped)
    terminalreporter.write_sep("-", f"{len(skipped)} skipped, by reason (pytest -rs lists each)")
    for reason, count in counts.most_common():
        terminalreporter.write_line(f"{count:5d}  {reason}")
