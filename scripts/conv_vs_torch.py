#!/usr/bin/env python
"""Time the NumPy backend's convolution against PyTorch's, shape by shape, at one thread.

    python scripts/conv_vs_torch.py                 # every shape below, 5 interleaved rounds
    python scripts/conv_vs_torch.py vgg2 1x1 --rounds 9

For each shape: the forward pass, the backward pass without the input gradient (the weight and
bias gradients: what a first layer needs) and the full backward pass, for portacnn's
``CpuKernels`` (the route :func:`portacnn.kernels.cpu_conv.choose_route` takes is shown) and for
PyTorch (``torch.nn.functional.conv2d`` and ``aten.convolution_backward`` with the same output
mask), float32, A/B interleaved, each the fastest of ``--rounds`` rounds of ``--repeats`` calls.
Clocks are the calling thread's CPU time (``time.thread_time``): at one thread (threadpoolctl
for OpenBLAS, ``torch.set_num_threads(1)``) all the work runs on that thread, and time spent
descheduled on a shared machine is not counted. Compare ratios within one run only.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

SHAPES = {  # name: (input (N, C, H, W), weight (F, C/groups, kh, kw), stride, padding, groups)
    "lenet1": ((64, 1, 28, 28), (6, 1, 5, 5), 1, 2, 1),
    "lenet2": ((64, 6, 14, 14), (16, 6, 5, 5), 1, 0, 1),
    "vgg1": ((64, 3, 32, 32), (16, 3, 3, 3), 1, 1, 1),
    "vgg2": ((64, 16, 32, 32), (32, 16, 3, 3), 1, 1, 1),
    "vgg3": ((64, 32, 16, 16), (64, 32, 3, 3), 1, 1, 1),
    "vgg4": ((64, 64, 16, 16), (128, 64, 3, 3), 1, 1, 1),
    "1x1": ((64, 64, 16, 16), (64, 64, 1, 1), 1, 0, 1),
    "7x7s2": ((64, 3, 64, 64), (64, 3, 7, 7), 2, 3, 1),
    "dw3x3": ((64, 32, 32, 32), (32, 1, 3, 3), 1, 1, 32),
}


def _fastest(fn, rounds_of: int) -> float:
    best = float("inf")
    for _ in range(rounds_of):
        start = time.thread_time()
        fn()
        best = min(best, time.thread_time() - start)
    return best


def _contenders(name, rng):
    import torch

    from portacnn.kernels import CpuKernels, cpu_conv
    from portacnn.kernels.conv import conv_geometry

    xs, ws, stride, padding, groups = SHAPES[name]
    x = rng.standard_normal(xs, dtype=np.float32)
    w = rng.standard_normal(ws, dtype=np.float32) * 0.1
    b = rng.standard_normal(ws[0], dtype=np.float32)
    g = conv_geometry(x, w, stride, padding, "zeros", groups)
    route = cpu_conv.choose_route(g, ws, groups, False)
    kernels = CpuKernels()
    y, cache = kernels.conv2d_forward(x, w, b, stride, padding, groups=groups)
    dy = rng.standard_normal(tuple(y.shape), dtype=np.float32)
    ours = (lambda: kernels.conv2d_forward(x, w, b, stride, padding, groups=groups),
            lambda: kernels.conv2d_backward(dy, w, cache, need_dx=False),
            lambda: kernels.conv2d_backward(dy, w, cache, need_dx=True))
    tx, tw, tb, tdy = (torch.from_numpy(a) for a in (x, w, b, dy))

    def torch_forward():
        with torch.no_grad():
            torch.nn.functional.conv2d(tx, tw, tb, stride, padding, 1, groups)

    def torch_backward(mask):
        return lambda: torch.ops.aten.convolution_backward(
            tdy, tx, tw, [ws[0]], [stride, stride], [padding, padding], [1, 1], False, [0, 0],
            groups, mask)

    theirs = (torch_forward, torch_backward([False, True, True]),
              torch_backward([True, True, True]))
    return route, ours, theirs


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("shapes", nargs="*", help=f"any of {', '.join(SHAPES)} (default all)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--repeats", type=int, default=2, help="calls per round (default 2)")
    args = parser.parse_args(argv)
    unknown = [name for name in args.shapes if name not in SHAPES]
    if unknown:
        parser.error(f"unknown shape(s) {', '.join(unknown)}: choose from {', '.join(SHAPES)}")

    import torch
    from threadpoolctl import threadpool_limits

    from portacnn.allocator import keep_freed_memory

    keep_freed_memory()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    print("| shape | route | forward ms (torch) | ratio | weight grad ms (torch) | ratio "
          "| full backward ms (torch) | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    with threadpool_limits(1):
        for name in args.shapes or list(SHAPES):
            route, ours, theirs = _contenders(name, rng)
            best = [[float("inf")] * 3 for _ in range(2)]
            for _ in range(args.rounds):
                for side, fns in enumerate((ours, theirs)):
                    for k, fn in enumerate(fns):
                        best[side][k] = min(best[side][k], _fastest(fn, args.repeats))
            cells = " | ".join(f"{a * 1e3:.2f} ({t * 1e3:.2f}) | {a / t:.2f}"
                               for a, t in zip(*best))
            print(f"| {name} | {route} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
