"""PyTorch autograd as an independent oracle (skipped where torch is not installed)."""

import numpy as np
import pytest

from portacnn import kernels as K

from helpers import assert_close

torch = pytest.importorskip("torch", reason="torch is not installed (optional test oracle)")
F = torch.nn.functional


def _t(a):
    return torch.tensor(a, dtype=torch.float64, requires_grad=True)


@pytest.mark.parametrize("stride,padding", [(1, 0), (2, 1), (3, 2), ((2, 1), (0, 1))])
def test_conv2d_matches_torch(core_backend, host_rng, stride, padding):
    x, w, b = (host_rng.normal(size=s) for s in ((2, 3, 9, 8), (4, 3, 3, 2), (4,)))
    tx, tw, tb = _t(x), _t(w), _t(b)
    ty = F.conv2d(tx, tw, tb, stride=stride, padding=padding)
    dy = host_rng.normal(size=tuple(ty.shape))
    ty.backward(torch.tensor(dy))
    be = core_backend
    y, cache = K.conv2d_forward(be.asarray(x), be.asarray(w), be.asarray(b), stride, padding)
    dx, dw, db = K.conv2d_backward(be.asarray(dy), be.asarray(w), cache)
    for ours, theirs in ((y, ty), (dx, tx.grad), (dw, tw.grad), (db, tb.grad)):
        assert_close(ours, theirs.detach().numpy())


@pytest.mark.filterwarnings("ignore:Using padding=.same. with even kernel")
def test_conv2d_same_matches_torch_same(core_backend, host_rng):
    # stride 1: TensorFlow's "same" and PyTorch's padding="same" coincide (even kernel too)
    x, w = host_rng.normal(size=(2, 2, 7, 6)), host_rng.normal(size=(3, 2, 4, 3))
    ty = F.conv2d(torch.tensor(x), torch.tensor(w), padding="same")
    y, _ = K.conv2d_forward(core_backend.asarray(x), core_backend.asarray(w), None, 1, "same")
    assert_close(y, ty.numpy())


@pytest.mark.parametrize("groups,filters", [(1, 4), (2, 4), (4, 4), (4, 8)],
                         ids=["groups1", "groups2", "depthwise", "depthwise-x2"])
@pytest.mark.parametrize("stride,padding", [(1, "same"), (2, 1)])
def test_grouped_conv2d_matches_torch(core_backend, host_rng, groups, filters, stride, padding):
    # 4 input channels; groups=4 is depthwise (with 2 filters per channel in "depthwise-x2")
    x, w, b = (host_rng.normal(size=s)
               for s in ((2, 4, 7, 6), (filters, 4 // groups, 3, 3), (filters,)))
    tx, tw, tb = _t(x), _t(w), _t(b)
    ty = F.conv2d(tx, tw, tb, stride=stride, padding=padding, groups=groups)
    dy = host_rng.normal(size=tuple(ty.shape))
    ty.backward(torch.tensor(dy))
    be = core_backend                  # its kernel set: the CPU overrides on numpy
    y, cache = be.kernels.conv2d_forward(be.asarray(x), be.asarray(w), be.asarray(b), stride,
                                         padding, groups=groups)
    dx, dw, db = be.kernels.conv2d_backward(be.asarray(dy), be.asarray(w), cache)
    for ours, theirs in ((y, ty), (dx, tx.grad), (dw, tw.grad), (db, tb.grad)):
        assert_close(ours, theirs.detach().numpy())


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("k,s,p", [(2, None, 0), (3, 2, 1), ((3, 2), (1, 2), (1, 0))])
def test_pooling_matches_torch(core_backend, host_rng, kind, k, s, p):
    x = host_rng.normal(size=(2, 3, 9, 8))
    x[0, 0, :4, :4] = 0.0               # ties: PyTorch routes to the first maximum, so must we
    tx = _t(x)
    tfn = F.max_pool2d if kind == "max" else F.avg_pool2d
    ty = tfn(tx, k, stride=s, padding=p)
    dy = host_rng.normal(size=tuple(ty.shape))
    ty.backward(torch.tensor(dy))
    fwd, bwd = ((K.max_pool2d_forward, K.max_pool2d_backward) if kind == "max"
                else (K.avg_pool2d_forward, K.avg_pool2d_backward))
    y, cache = fwd(core_backend.asarray(x), k, s, p)
    assert_close(y, ty.detach().numpy())
    assert_close(bwd(core_backend.asarray(dy), cache), tx.grad.numpy())


def test_dense_matches_torch(core_backend, host_rng):
    x, w, b = (host_rng.normal(size=s) for s in ((5, 7), (3, 7), (3,)))
    tx, tw, tb = _t(x), _t(w), _t(b)
    ty = F.linear(tx, tw, tb)
    dy = host_rng.normal(size=(5, 3))
    ty.backward(torch.tensor(dy))
    be = core_backend
    assert_close(K.dense_forward(be.asarray(x), be.asarray(w), be.asarray(b)), ty.detach().numpy())
    grads = K.dense_backward(be.asarray(dy), be.asarray(x), be.asarray(w))
    for ours, theirs in zip(grads, (tx.grad, tw.grad, tb.grad)):
        assert_close(ours, theirs.numpy())


def test_losses_match_torch(core_backend, host_rng):
    logits = host_rng.normal(size=(6, 4)) * 5
    labels = np.array([0, 1, 3, 3, 2, 1])
    tl = _t(logits)
    tloss = F.cross_entropy(tl, torch.tensor(labels))
    tloss.backward()
    loss, grad = K.softmax_cross_entropy(core_backend.asarray(logits), core_backend.asarray(labels))
    assert abs(float(loss) - tloss.item()) < 1e-12
    assert_close(grad, tl.grad.numpy())
    target = host_rng.normal(size=(6, 4))
    tp = _t(logits)
    tmse = F.mse_loss(tp, torch.tensor(target))
    tmse.backward()
    loss, grad = K.mse(core_backend.asarray(logits), core_backend.asarray(target))
    assert abs(float(loss) - tmse.item()) < 1e-10 * tmse.item()
    assert_close(grad, tp.grad.numpy())
