"""Property tests: Hypothesis draws random geometries (batch, channels, size, kernel, stride,
padding, padding mode) and every windowed kernel, portable and CPU override, must agree with the
naive loops of :mod:`portacnn.reference` in float64 on NumPy.

Geometries the kernels refuse are skipped with ``assume``: a kernel larger than the padded
input, and pooling padding wider than half the kernel. Hypothesis shrinks a failure to the
smallest geometry that shows it.
"""

import numpy as np
import pytest

pytest.importorskip("hypothesis", reason="hypothesis is not installed (portacnn[test])")
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from portacnn import kernels as K
from portacnn import reference as R
from portacnn.kernels import CpuKernels, Kernels, cpu_conv
from portacnn.kernels.cpu_folded import FoldedCache

from helpers import assert_close

PROPERTY = settings(max_examples=40, deadline=None)

paddings = st.one_of(st.integers(0, 2), st.tuples(st.integers(0, 2), st.integers(0, 2)),
                     st.sampled_from(["same", "valid"]))


@st.composite
def geometries(draw, pooling=False):
    """(input shape, (kh, kw), (sh, sw), padding, padding mode, seed), checked with the loops'
    own padding arithmetic (:func:`portacnn.reference.pads`)."""
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 9)),
             draw(st.integers(1, 9)))
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = draw(paddings)
    mode = draw(st.sampled_from(["zeros", "replicate"]))
    per_axis = (padding, padding) if isinstance(padding, (int, str)) else padding
    for size, k, s, p in zip(shape[2:], kernel, stride, per_axis):
        before, after = R.pads(size, k, s, p)
        assume(k <= size + before + after)
        if pooling:
            assume(max(before, after) <= k // 2)
    return shape, kernel, stride, padding, mode, draw(st.integers(0, 2**32 - 1))


CACHES = {"batch_minor": cpu_conv.RowBlockCache, "folded": FoldedCache,
          "pointwise": cpu_conv.PointwiseCache}


def _conv_routes():
    """The portable kernels and the CPU override on each of its routes, the folded one also
    one image per chunk: (name, forward, backward, route or None). A route a geometry does not
    fit (:func:`~portacnn.kernels.cpu_conv.routes_that_fit`) gives way to the folded one."""
    yield "portable", K.conv2d_forward, K.conv2d_backward, None
    for route, chunk, budget in (("batch_minor", cpu_conv.COLUMN_CHUNK, cpu_conv.COLUMN_BUDGET),
                                 ("pointwise", cpu_conv.COLUMN_CHUNK, cpu_conv.COLUMN_BUDGET),
                                 ("folded", cpu_conv.COLUMN_CHUNK, cpu_conv.COLUMN_BUDGET),
                                 ("folded", 1, 0)):      # one image a chunk, columns rebuilt
        def forward(*args, route=route, chunk=chunk, budget=budget, **kwargs):
            fit = cpu_conv.routes_that_fit
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(cpu_conv, "choose_route", lambda g, ws, groups, inference:
                           route if route in fit(g, ws, groups) else "folded")
                mp.setattr(cpu_conv, "COLUMN_CHUNK", chunk)
                mp.setattr(cpu_conv, "COLUMN_BUDGET", budget)
                return cpu_conv.conv2d_forward(*args, **kwargs)
        yield f"{route} {chunk} {budget}", forward, cpu_conv.conv2d_backward, route


@PROPERTY
@given(geometries(), st.integers(1, 3), st.integers(1, 2))
def test_conv_portable_and_overrides_match_loops(geo, groups, filters_per_group):
    """``groups`` splits C = groups * (the drawn channels) and F = groups * filters_per_group;
    groups 1 is the plain convolution, and a drawn channel count of 1 makes it depthwise."""
    shape, kernel, stride, padding, mode, seed = geo
    shape = (shape[0], shape[1] * groups) + shape[2:]
    rng = np.random.default_rng(seed)
    x = rng.normal(size=shape)
    f = groups * filters_per_group
    w = rng.normal(size=(f, shape[1] // groups) + kernel)
    b = rng.normal(size=f)
    y_ref = R.conv2d(x, w, b, stride, padding, mode, groups)
    dy = rng.normal(size=y_ref.shape)
    grads_ref = R.conv2d_backward(dy, x, w, stride, padding, mode, groups)
    for name, forward, backward, route in _conv_routes():
        y, cache = forward(x, w, b, stride, padding, mode, groups=groups)
        if route is not None:
            geo = K.geometry(shape[2:], kernel, stride, padding, mode)
            fits = route in cpu_conv.routes_that_fit(geo, w.shape, groups)
            assert type(cache) is CACHES[route if fits else "folded"], name
        assert_close(y, y_ref)
        fast, nothing = forward(x, w, b, stride, padding, mode, groups=groups, inference=True)
        assert nothing is None
        assert_close(fast, y_ref)
        for got, want in zip(backward(dy, w, cache), grads_ref):
            assert_close(got, want)
        no_dx, dw, db = backward(dy, w, cache, need_dx=False)
        assert no_dx is None
        assert_close(dw, grads_ref[1])
        assert_close(db, grads_ref[2])


@PROPERTY
@given(geometries(pooling=True), st.sampled_from(["max", "min", "avg"]), st.booleans())
def test_pooling_portable_and_overrides_match_loops(geo, kind, relu):
    shape, kernel, stride, padding, mode, seed = geo
    rng = np.random.default_rng(seed)
    x = rng.normal(size=shape)
    if relu:
        x = np.maximum(x, 0.0)             # ties: the gradient goes to the first extreme only
    y_ref = getattr(R, f"{kind}_pool2d")(x, kernel, stride, padding, mode)
    dy = rng.normal(size=y_ref.shape)
    dx_ref = getattr(R, f"{kind}_pool2d_backward")(dy, x, kernel, stride, padding, mode)
    for kernels in (Kernels, CpuKernels):
        forward = getattr(kernels, f"{kind}_pool2d_forward")
        y, cache = forward(x, kernel, stride, padding, mode)
        assert_close(y, y_ref)
        fast, nothing = forward(x, kernel, stride, padding, mode, inference=True)
        assert nothing is None
        assert_close(fast, y_ref)
        assert_close(getattr(kernels, f"{kind}_pool2d_backward")(dy, cache), dx_ref)


@PROPERTY
@given(geometries())
def test_im2col_matches_loops_and_col2im_is_its_adjoint(geo):
    shape, kernel, stride, padding, mode, seed = geo
    rng = np.random.default_rng(seed)
    x = rng.normal(size=shape)
    geo = K.geometry(shape[2:], kernel, stride, padding, mode)
    cols = K.im2col(x, geo)
    assert_close(cols, R.im2col(x, kernel, stride, padding, mode))
    g = rng.normal(size=cols.shape)
    lhs = float(np.sum(cols * g))
    rhs = float(np.sum(x * K.col2im(g, geo, shape)))
    assert abs(lhs - rhs) <= 1e-10 * max(abs(lhs), 1.0)
