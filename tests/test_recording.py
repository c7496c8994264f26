"""Tests of the recording array type (tests/recording.py): exact counts where its rule fixes
them, and results equal to NumPy's."""

import inspect

import array_api_compat
import array_api_extra as xpx
import numpy as np
import pytest

from recording import (RecordingArray, RecordingNamespace, Recorder, namespace, recording,
                       unwrap, wrap)

xp = namespace


@pytest.fixture
def ab():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 4))
    b = rng.normal(size=(3, 4))
    return a, b, wrap(a.copy()), wrap(b.copy())


def counted(fn):
    """Run ``fn`` under a fresh recorder; return (result, recorder)."""
    with recording() as rec:
        out = fn()
    return out, rec


def test_array_namespace_is_the_recording_namespace():
    x = wrap(np.ones(3))
    assert array_api_compat.array_namespace(x) is namespace
    assert isinstance(namespace, RecordingNamespace)
    assert array_api_compat.device(x) == "cpu"
    assert array_api_compat.is_writeable_array(x)


def test_wrap_and_unwrap_count_nothing_and_do_not_copy():
    a = np.ones(3)
    (x, back), rec = counted(lambda: (wrap(a), unwrap(wrap(a))))
    assert isinstance(x, RecordingArray) and back is a
    assert (rec.ops, rec.host_reads) == (0, 0)


def test_add_counts_one(ab):
    a, b, x, y = ab
    out, rec = counted(lambda: x + y)
    assert isinstance(out, RecordingArray)
    np.testing.assert_array_equal(unwrap(out), a + b)
    assert (rec.ops, rec.host_reads) == (1, 0)
    assert rec.by_name == {"__add__": 1}


def test_operators_with_scalars_and_reflected(ab):
    a, _, x, _ = ab
    out, rec = counted(lambda: (2.0 * x, 1 - x, x ** 2, -x, abs(x), x / 3, x // 2, x % 2,
                                x < 0, x == x, np.float32(3) * x))
    expected = (2.0 * a, 1 - a, a ** 2, -a, abs(a), a / 3, a // 2, a % 2, a < 0, a == a,
                np.float32(3) * a)
    for got, want in zip(out, expected):
        np.testing.assert_array_equal(unwrap(got), want)
    assert rec.ops == len(expected) and rec.host_reads == 0


def test_matmul_counts_one(ab):
    a, b, x, y = ab
    out, rec = counted(lambda: (xp.matmul(x, xp.matrix_transpose(y)), x @ y.mT))
    for got in out:
        np.testing.assert_allclose(unwrap(got), a @ b.T)
    assert rec.ops == 2 and rec.by_name == {"matmul": 1, "__matmul__": 1}


def test_basic_slicing_is_a_free_view(ab):
    a, _, x, _ = ab
    out, rec = counted(lambda: (x[1:3], x[:, 0, ...], x[0], x[0, 1], x[..., None]))
    assert rec.ops == 0 and rec.host_reads == 0
    np.testing.assert_array_equal(unwrap(out[0]), a[1:3])
    assert out[3].shape == () and float(unwrap(out[3])) == a[0, 1]
    # a view: writing through the base shows in the slice
    x[1, 0] = 42.0
    assert float(unwrap(out[0])[0, 0]) == 42.0


def test_advanced_indexing_counts_one(ab):
    a, _, x, _ = ab
    mask = x > 0
    out, rec = counted(lambda: x[mask])
    np.testing.assert_array_equal(unwrap(out), a[a > 0])
    assert rec.ops == 1 and rec.by_name == {"__getitem__": 1}


def test_reshape_of_contiguous_is_free_and_of_a_transpose_copies(ab):
    a, _, x, _ = ab
    out, rec = counted(lambda: xp.reshape(x, (4, 3)))
    assert rec.ops == 0
    np.testing.assert_array_equal(unwrap(out), a.reshape(4, 3))
    out, rec = counted(lambda: xp.reshape(xp.permute_dims(x, (1, 0)), (12,)))
    assert rec.ops == 1 and rec.by_name == {"reshape": 1}
    np.testing.assert_array_equal(unwrap(out), a.T.reshape(12))


def test_view_functions_are_free(ab):
    _, _, x, _ = ab
    _, rec = counted(lambda: (xp.permute_dims(x, (1, 0)), xp.matrix_transpose(x),
                              xp.broadcast_to(x[None], (2, 3, 4)), xp.expand_dims(x, axis=0),
                              xp.squeeze(x[None], axis=0), xp.asarray(x), x.T, x.mT,
                              xp.astype(x, x.dtype, copy=False), xp.unstack(x)))
    assert rec.ops == 0, rec.by_name


def test_asarray_of_the_same_array_returns_it():
    x = wrap(np.ones(3))
    assert xp.asarray(x) is x


def test_stack_counts_one(ab):
    a, b, x, y = ab
    out, rec = counted(lambda: xp.stack([x, y], axis=0))
    np.testing.assert_array_equal(unwrap(out), np.stack([a, b]))
    assert rec.ops == 1 and rec.by_name == {"stack": 1}


def test_creation_functions_count_one_each():
    out, rec = counted(lambda: (
        xp.zeros((2, 3), dtype=xp.float32, device="cpu"), xp.ones(3, dtype=xp.float64),
        xp.full((2,), 7.0, dtype=xp.float32, device=None), xp.empty((4,), device="cpu"),
        xp.arange(5, device="cpu"), xp.asarray(np.ones(3), device="cpu"),
        xp.asarray([1.0, 2.0])))
    assert rec.ops == len(out) and rec.host_reads == 0
    assert all(isinstance(o, RecordingArray) for o in out)
    assert out[0].dtype == np.float32 and unwrap(out[2]).tolist() == [7.0, 7.0]


def test_upload_copies_host_data():
    host = np.zeros(3)
    x = xp.asarray(host)
    host[0] = 1.0
    assert float(unwrap(x)[0]) == 0.0


def test_float_of_a_sum_is_one_op_and_one_host_read(ab):
    a, _, x, _ = ab
    value, rec = counted(lambda: float(xp.sum(x)))
    assert value == pytest.approx(float(np.sum(a)))
    assert (rec.ops, rec.host_reads) == (1, 1)
    assert rec.by_name == {"sum": 1} and rec.reads_by_name == {"__float__": 1}


def test_host_reads_are_counted_apart():
    x = wrap(np.asarray(2.0))
    i = wrap(np.asarray(3))
    out, rec = counted(lambda: (bool(x), int(i), float(x), list(range(i)), np.asarray(x),
                                np.from_dlpack(x)))
    assert rec.ops == 0 and rec.host_reads == 6, rec.reads_by_name
    assert out[:4] == (True, 3, 2.0, [0, 1, 2])
    assert not np.shares_memory(out[4], unwrap(x)), "a host read is a copy, as from a GPU"


def test_in_place_add_mutates_and_counts_one(ab):
    a, b, x, y = ab
    before = x

    def go():
        nonlocal x
        x += y
        return x

    out, rec = counted(go)
    assert out is before
    np.testing.assert_array_equal(unwrap(before), a + b)
    assert rec.ops == 1 and rec.by_name == {"__iadd__": 1}


def test_setitem_counts_one_and_mutates(ab):
    a, b, x, y = ab
    _, rec = counted(lambda: x.__setitem__((slice(0, 2), slice(None)), y[0:2]))
    a[0:2] = b[0:2]
    np.testing.assert_array_equal(unwrap(x), a)
    assert rec.ops == 1 and rec.by_name == {"__setitem__": 1}


def test_xpx_at_add_and_set(ab):
    a, b, x, y = ab
    out, rec = counted(lambda: xpx.at(x, (slice(0, 1),)).add(y[0:1]))
    a[0:1] += b[0:1]
    np.testing.assert_array_equal(unwrap(out), a)
    assert rec.ops >= 1 and rec.host_reads == 0
    out, rec = counted(lambda: xpx.at(x, (slice(1, 2), slice(None))).set(0.5))
    a[1] = 0.5
    np.testing.assert_array_equal(unwrap(out), a)
    assert rec.ops == 1 and rec.host_reads == 0


def test_xpx_pad(ab):
    a, _, x, _ = ab
    out, rec = counted(lambda: xpx.pad(x, ((1, 1), (2, 0))))
    np.testing.assert_array_equal(unwrap(out), np.pad(a, ((1, 1), (2, 0))))
    assert isinstance(out, RecordingArray) and rec.ops >= 1 and rec.host_reads == 0


def test_functions_match_numpy(ab):
    a, b, x, y = ab
    pairs = [
        (xp.exp(x), np.exp(a)), (xp.tanh(x), np.tanh(a)), (xp.maximum(x, 0.0), np.maximum(a, 0)),
        (xp.where(x > y, x, y), np.where(a > b, a, b)), (xp.max(x, axis=1), a.max(axis=1)),
        (xp.argmax(x, axis=0), a.argmax(axis=0)), (xp.mean(x, axis=(0, 1)), a.mean()),
        (xp.concat([x, y], axis=1), np.concatenate([a, b], axis=1)),
        (xp.astype(x, xp.float32), a.astype(np.float32)), (xp.linalg.vector_norm(x), np.linalg.norm(a)),
    ]
    for got, want in pairs:
        assert isinstance(got, RecordingArray)
        np.testing.assert_allclose(unwrap(got), want, rtol=1e-6)


def test_dtype_queries_pass_through_uncounted(ab):
    _, _, x, _ = ab
    _, rec = counted(lambda: (xp.float32, xp.isdtype(x.dtype, "real floating"),
                              xp.finfo(xp.float32).eps, xp.result_type(x, xp.float32),
                              xp.can_cast(x.dtype, xp.float32), xp.iinfo(xp.int8).max,
                              xp.pi, xp.e, xp.inf, xp.nan, xp.newaxis, xp.__array_api_version__,
                              xp.__array_namespace_info__().devices()))
    assert rec.ops == 0 and rec.host_reads == 0
    assert xp.result_type(x, xp.float32) == np.float64


def test_mixing_with_numpy_arrays_raises(ab):
    a, _, x, _ = ab
    with pytest.raises(TypeError, match="NumPy array"):
        x + a
    with pytest.raises(TypeError, match="NumPy array"):
        a + x
    with pytest.raises(TypeError, match="NumPy array"):
        xp.stack([x, a])
    with pytest.raises(TypeError, match="NumPy array"):
        x[0] = a[0]


def test_recorders_nest_and_reset(ab):
    _, _, x, y = ab
    with recording() as outer:
        x + y
        with recording() as inner:
            x * y
        inner_ops = inner.ops
    assert (outer.ops, inner_ops) == (2, 1)
    x - y                                       # outside every recorder: counted nowhere
    assert outer.ops == 2
    outer.reset()
    assert (outer.ops, outer.host_reads, outer.by_name) == (0, 0, {})
    assert isinstance(outer, Recorder)


def test_trace_names_the_calling_line(ab):
    _, _, x, y = ab
    with recording(trace=True) as rec:
        line = inspect.currentframe().f_lineno + 1
        x + y
    ((name, where),) = rec.events
    assert name == "__add__" and where.endswith(f"test_recording.py:{line}")
