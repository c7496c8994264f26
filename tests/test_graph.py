"""Graph models (issue 20): the merging layers against naive loops and PyTorch, and
``portacnn.Model``: one SGD step against PyTorch, gradients summed where a tensor feeds two
layers, save / load across backends, the summary and the errors."""

import numpy as np
import pytest

from portacnn import kernels as K
from portacnn import reference as R
from portacnn import Sequential
from portacnn.layers import Add, Concatenate, Identity

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
