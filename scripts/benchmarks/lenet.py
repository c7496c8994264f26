"""LeNet-5 sections: per-layer times, training epochs and inference against PyTorch, the
tutorial-style NumPy implementation, scaling with batch and image size, memory over epochs."""

from __future__ import annotations

import gc
import statistics
import tracemalloc

import numpy as np

from portacnn import AvgPool2D, Conv2D, Dense, Flatten, Sequential, Tanh
from portacnn.models import lenet5
from portacnn.optim import SGD

from .common import LR, MOMENTUM, dataset, peak_bytes, peer_timed, summarize, timed

# --- PyTorch peer ---------------------------------------------------------------------------

def torch_lenet(model, peer):
    """LeNet-5 in torch.nn with portacnn's initial weights (same shapes, same layout), on the
    peer's device."""
    torch = peer.torch
    nn = torch.nn
    net = nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.Tanh(), nn.AvgPool2d(2),
        nn.Conv2d(6, 16, 5), nn.Tanh(), nn.AvgPool2d(2), nn.Flatten(),
        nn.Linear(400, 120), nn.Tanh(), nn.Linear(120, 84), nn.Tanh(), nn.Linear(84, 10))
    ours = [layer for layer in model.layers if layer.params]
    theirs = [m for m in net if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        for a, b in zip(ours, theirs):
            b.weight.copy_(torch.from_numpy(model.backend.to_numpy(a.params["weight"])))
            b.bias.copy_(torch.from_numpy(model.backend.to_numpy(a.params["bias"])))
    return net.to(peer.device)


def torch_epoch(net, opt, x, y, batch_size, torch):
    """One epoch in the idiomatic PyTorch loop over ``x``, ``y`` already shuffled and on the
    device, doing the same work as Sequential.fit."""
    F = torch.nn.functional
    net.train()
    total = torch.zeros((), device=x.device)
    hits = torch.zeros((), dtype=torch.int64, device=x.device)
    for start in range(0, len(x), batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        opt.zero_grad(set_to_none=True)
        logits = net(xb)
        loss = F.cross_entropy(logits, yb)
        loss.backward()
        opt.step()
        total += loss.detach() * len(xb)
        hits += (logits.argmax(1) == yb).sum()
    return float(total) / len(x), int(hits) / len(x)


def per_layer(backend, batch_size, dtype, repeats, peer=None):
    """Forward and backward time of each LeNet-5 layer on one batch (ms)."""
    model = lenet5(device=backend, dtype=dtype, seed=0)
    x, _ = dataset(batch_size, dtype)
    h = backend.asarray(x)
    inputs = []
    grads = [None] * len(model.layers)
    with backend.activate():                    # layers' private methods are called directly
        for layer in model.layers:
            inputs.append(h)
            h = layer._forward(h)
        g = backend.asarray(np.ones(tuple(h.shape), dtype=dtype))
        for k in reversed(range(len(model.layers))):
            grads[k] = g
            out = model.layers[k]._backward(g)
            g = out if out is not None else g
    rows = []
    tnet = torch_lenet(model, peer) if peer else None
    def ten(fn, arg):
        for _ in range(10):
            fn(arg)                 # results dropped at once, as in training

    for k, layer in enumerate(model.layers):
        with backend.activate():
            fwd = [timed(lambda: ten(layer._forward, inputs[k]), backend) / 10
                   for _ in range(repeats + 1)][1:]
            bwd = [timed(lambda: ten(layer._backward, grads[k]), backend) / 10
                   for _ in range(repeats + 1)][1:]
        row = {"layer": f"{layer.name}", "forward_ms": statistics.median(fwd) * 1e3,
               "backward_ms": statistics.median(bwd) * 1e3}
        if tnet is not None:
            row.update(_torch_layer_times(tnet[k], backend.to_numpy(inputs[k]),
                                          backend.to_numpy(grads[k]), repeats, peer))
        rows.append(row)
    return rows


def _torch_layer_times(module, x, g, repeats, peer):
    xt = peer.tensor(x).requires_grad_(True)
    gt = peer.tensor(g)
    fwd, bwd = [], []

    def forward():
        for _ in range(10):
            module(xt)

    def forward_backward():
        for _ in range(10):
            module(xt).backward(gt)

    for _ in range(repeats + 1):
        fwd.append(peer_timed(forward, peer) / 10)
        bwd.append(peer_timed(forward_backward, peer) / 10 - fwd[-1])
    return {"torch_forward_ms": statistics.median(fwd[1:]) * 1e3,
            "torch_backward_ms": max(statistics.median(bwd[1:]), 0.0) * 1e3}


def train_epochs(backend, args, threads, peer=None):
    """Epoch times for portacnn (and PyTorch, interleaved A/B) at one thread count. Each
    epoch's shuffled copy is gathered and moved to the device before the clock starts."""
    x, y = dataset(args.images, args.dtype)
    orders = [np.random.default_rng(r).permutation(len(x)) for r in range(args.repeats + 1)]
    model = lenet5(device=backend, dtype=args.dtype, seed=0)
    opt = SGD(LR, momentum=MOMENTUM)
    results = {"portacnn": [], "torch": [], "portacnn_loss": [], "torch_loss": []}
    if peer is not None:
        torch = peer.torch
        net = torch_lenet(model, peer)
        topt = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM)

    def run_ours(data):
        hist = model.fit(*data, epochs=1, batch_size=args.batch_size, optimizer=opt,
                         shuffle=False, verbose=0)
        results["portacnn_loss"].append(hist["loss"][0])

    def run_torch(data):
        loss, _ = torch_epoch(net, topt, *data, args.batch_size, torch)
        results["torch_loss"].append(loss)

    for r, order in enumerate(orders):          # run 0 is the warm-up
        pair = [("portacnn", run_ours)] + ([("torch", run_torch)] if peer is not None else [])
        if r % 2:
            pair.reverse()                      # A/B, then B/A: drift hits both alike
        this_run = {}
        for name, fn in pair:
            if name == "portacnn":
                data = (backend.asarray(x[order], dtype=args.dtype), backend.asarray(y[order]))
            else:
                data = (peer.tensor(x[order]), peer.tensor(y[order]))
            gc.collect()
            this_run[name] = timed(lambda: fn(data), backend, peer)
            del data
            if r > 0:
                results[name].append(this_run[name])
        print(f"    epoch run {r}{' (warm-up)' if r == 0 else ''}: "
              + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in this_run.items()),
              flush=True)
    out = {"threads": threads, "portacnn": summarize(results["portacnn"]),
           "portacnn_loss_first_epoch": results["portacnn_loss"][0]}
    if peer is not None:
        out["torch"] = summarize(results["torch"])
        out["torch_loss_first_epoch"] = results["torch_loss"][0]
        ratios = [a / b for a, b in zip(results["portacnn"], results["torch"])]
        out["ratio_portacnn_over_torch"] = summarize(ratios)
    return out


def inference(backend, args, peer=None):
    """Images per second of predict() at several batch sizes (higher is better), A/B
    interleaved with PyTorch when it is given. The images start on the host for both."""
    n = min(args.images, 10_000)
    x, _ = dataset(n, args.dtype)
    model = lenet5(device=backend, dtype=args.dtype, seed=0)
    rows = []
    net = torch_lenet(model, peer).eval() if peer is not None else None
    torch = peer.torch if peer is not None else None
    tx = torch.from_numpy(x) if peer is not None else None

    def run_torch(bs):
        with torch.inference_mode():
            for s in range(0, n, bs):
                torch.softmax(net(tx[s:s + bs].to(peer.device)), dim=1)

    for bs in args.infer_batches:
        ours, theirs = [], []
        for r in range(args.repeats + 1):              # run 0 is the warm-up
            pair = [(ours, lambda: model.predict(x, batch_size=bs))]
            if net is not None:
                pair.append((theirs, lambda: run_torch(bs)))
            if r % 2:
                pair.reverse()
            for out, fn in pair:
                seconds = timed(fn, backend, peer)
                if r:
                    out.append(n / seconds)
        row = {"batch_size": bs, "portacnn_images_per_s": summarize(ours)}
        if theirs:
            row["torch_images_per_s"] = summarize(theirs)
            row["ratio_portacnn_over_torch"] = summarize([a / b for a, b in zip(ours, theirs)])
        rows.append(row)
    return rows


def tutorial(backend, args):
    """Tutorial-style NumPy LeNet-5 and portacnn on the same subset, A/B interleaved; each
    side's time scaled to an epoch of --images."""
    from tutorial_lenet import TutorialLeNet

    n = min(args.tutorial_images, args.images)
    x, y = dataset(n, args.dtype)
    net = TutorialLeNet(lenet5(seed=0), lr=LR, momentum=MOMENTUM)
    model = lenet5(device=backend, dtype=args.dtype, seed=0)
    opt = SGD(LR, momentum=MOMENTUM)

    def run_tutorial():
        for s in range(0, n, args.batch_size):
            net.train_step(x[s:s + args.batch_size], y[s:s + args.batch_size])

    def run_ours():
        model.fit(x, y, epochs=1, batch_size=args.batch_size, optimizer=opt, shuffle=False,
                  verbose=0)

    theirs, ours = [], []
    for r in range(args.repeats + 1):                # run 0 is the warm-up
        pair = [(theirs, run_tutorial), (ours, run_ours)]
        if r % 2:
            pair.reverse()
        for out, fn in pair:
            seconds = timed(fn, backend) * args.images / n
            if r:
                out.append(seconds)
    return {"images_timed": n, "epoch_seconds_scaled": summarize(theirs),
            "portacnn_epoch_seconds_scaled": summarize(ours),
            "speedup_portacnn_over_tutorial": summarize([a / b for a, b in zip(theirs, ours)])}


def _lenet_for(size, backend, dtype):
    """LeNet-5's layers for a size x size input (the first dense layer grows with it)."""
    return Sequential([Conv2D(6, 5, padding=2), Tanh(), AvgPool2D(2), Conv2D(16, 5), Tanh(),
                       AvgPool2D(2), Flatten(), Dense(120), Tanh(), Dense(84), Tanh(),
                       Dense(10)], input_shape=(1, size, size), device=backend, dtype=dtype)


def scaling(backend, args):
    """Training time per image and peak memory as the batch and the image grow."""
    rows = []
    configs = [(bs, 28) for bs in args.scale_batches] + [(64, s) for s in (56, 112)]
    for bs, size in configs:
        model = _lenet_for(size, backend, args.dtype)
        opt = SGD(LR, momentum=MOMENTUM)
        steps = max(2, min(40, 2048 // bs)) if size == 28 else 6
        rng = np.random.default_rng(0)
        x = backend.asarray(rng.normal(size=(bs, 1, size, size)), dtype=args.dtype)
        y = backend.asarray(rng.integers(0, 10, bs))
        model.train_step(x, y, opt)                               # warm-up
        per_image = []
        for _ in range(args.repeats):
            t = timed(lambda: [model.train_step(x, y, opt) for _ in range(steps)], backend)
            per_image.append(t / (steps * bs))
        peak = peak_bytes(lambda: model.train_step(x, y, opt), backend)
        rows.append({"batch_size": bs, "image_size": size, "us_per_image": summarize(
            [p * 1e6 for p in per_image]), "peak_mib": None if peak is None else peak / 2**20})
    return rows


MEMORY_EPOCHS = 8


def memory_over_epochs(backend, args):
    """Traced memory after each of MEMORY_EPOCHS epochs: it should not grow. (NumPy's and
    Python's small-object caches fill up over the first few epochs, some KiB in all; a leak
    would grow with every epoch.)"""
    x, y = dataset(min(args.images, 6000), args.dtype)
    model = lenet5(device=backend, dtype=args.dtype, seed=0)
    opt = SGD(LR, momentum=MOMENTUM)
    if not backend.host_memory_traced:
        return None
    tracemalloc.start()
    try:
        out = []
        for _ in range(MEMORY_EPOCHS):
            model.fit(x, y, epochs=1, batch_size=args.batch_size, optimizer=opt, verbose=0)
            gc.collect()
            out.append(tracemalloc.get_traced_memory()[0] / 2**20)
        return out
    finally:
        tracemalloc.stop()

