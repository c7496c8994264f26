"""The convolution sweep (``--sweep``): forward, weight gradient and input gradient of one
convolution per shape, the backend's kernel set against PyTorch, A/B interleaved, at the thread
count the caller set (one).

Per shape: ``backend.kernels.conv2d_forward`` (training mode: it keeps its cache) against
``torch.nn.functional.conv2d``; the weight gradient (``conv2d_backward(..., need_dx=False)``:
dW and db) against ``torch.ops.aten.convolution_backward`` with output mask (dx no, dW, db);
the full backward (dx, dW, db) against the mask (yes, yes, yes). The input gradient's time is
the full backward's minus the weight gradient's, on both sides alike. Each time is the median
over ``repeats`` of a loop of calls lasting at least ``min_seconds`` of the calling thread's CPU
time (:data:`CLOCK`; both sides run on that thread alone, so that is their work without the
time slices other programs took); GFLOP/s counts
2·N·F·OH·OW·(C/groups)·kh·kw per product (forward, dW and dx each). The route is what the CPU
override took: the cache's ``route`` attribute where it has one, else its class name
(``RowBlockCache``: batch-minor rows; ``FoldedCache``: batch-folded columns;
``PointwiseCache``: 1x1; ``ConvCache``: the portable columns).

Grouped rows run only where the kernel accepts ``groups=`` (a signature check); otherwise they
are listed as skipped.
"""

from __future__ import annotations

import inspect
import statistics
import time

import numpy as np

# (N, C, H=W, F, k, stride, padding, groups, what the shape stands for)
SHAPES = [
    (64, 1, 28, 6, 5, 1, 2, 1, "LeNet conv1"),
    (64, 6, 14, 16, 5, 1, 0, 1, "LeNet conv2"),
    (32, 16, 20, 32, 3, 1, 1, 1, "issue 21's misrouted shape"),
    (64, 3, 32, 32, 3, 1, 1, 1, "VGG conv1"),
    (64, 32, 32, 32, 3, 1, 1, 1, "VGG conv2"),
    (64, 32, 16, 64, 3, 1, 1, 1, "VGG conv3"),
    (64, 64, 16, 64, 3, 1, 1, 1, "VGG conv4"),
    (64, 64, 16, 128, 3, 1, 1, 1, "64->128 channels, 16 px"),
    (64, 16, 32, 16, 3, 1, 1, 1, "ResNet-20 stage 1"),
    (64, 16, 32, 32, 3, 2, 1, 1, "ResNet-20 into stage 2"),
    (64, 16, 32, 32, 1, 2, 0, 1, "ResNet-20 1x1 shortcut"),
    (64, 32, 16, 32, 3, 1, 1, 1, "ResNet-20 stage 2"),
    (64, 32, 16, 64, 3, 2, 1, 1, "ResNet-20 into stage 3"),
    (64, 64, 8, 64, 3, 1, 1, 1, "ResNet-20 stage 3"),
    (1, 64, 32, 64, 3, 1, 1, 1, "batch 1"),
    (1, 3, 64, 16, 5, 1, 2, 1, "batch 1, 64 px"),
    (128, 1, 28, 8, 3, 1, 1, 1, "batch 128, one channel"),
    (128, 8, 14, 16, 3, 2, 1, 1, "batch 128, stride 2"),
    (128, 16, 7, 32, 3, 1, 1, 1, "batch 128, 7 px"),
    (8, 256, 7, 256, 3, 1, 1, 1, "256 channels, 7 px"),
    (16, 128, 14, 128, 3, 1, 1, 1, "128 channels, 14 px"),
    (4, 256, 14, 256, 1, 1, 0, 1, "pointwise 256"),
    (64, 64, 16, 128, 1, 1, 0, 1, "pointwise 64->128"),
    (32, 32, 32, 32, 1, 1, 0, 1, "pointwise, 32 px"),
    (32, 32, 16, 64, 5, 1, 2, 1, "5x5, 32 channels"),
    (16, 16, 32, 16, 7, 1, 3, 1, "7x7, 32 px"),
    (8, 3, 64, 32, 7, 2, 3, 1, "7x7 stride 2 stem, 64 px"),
    (32, 1, 64, 8, 7, 2, 3, 1, "7x7 stride 2, one channel"),
    (8, 32, 64, 32, 3, 1, 1, 1, "3x3, 64 px"),
    (32, 32, 16, 32, 3, 1, 1, 32, "depthwise 32"),
    (64, 16, 32, 16, 3, 1, 1, 16, "depthwise 16, 32 px"),
    (32, 64, 14, 64, 3, 1, 1, 4, "4 groups"),
    (16, 128, 7, 128, 3, 1, 1, 8, "8 groups, 7 px"),
    (32, 64, 16, 128, 1, 1, 0, 2, "pointwise, 2 groups"),
]

# --quick: the same kinds of rows (plain, stride 2, 1x1, groups) at toy sizes
QUICK_SHAPES = [
    (4, 3, 8, 4, 3, 1, 1, 1, "toy 3x3"),
    (4, 4, 9, 8, 1, 2, 0, 1, "toy 1x1 stride 2"),
    (2, 4, 7, 4, 3, 1, 1, 2, "toy 2 groups"),
]

OPS = ("forward", "weight_grad", "full_backward")

# Both sides run on the calling thread alone (1 BLAS thread, torch.set_num_threads(1)), so its
# CPU time is the work itself: on a shared machine the wall clock also counts the time slices
# other programs took, which land on one side or the other at random; the process's CPU time
# would count pool threads still spinning after an earlier multi-threaded call.
CLOCK = time.thread_time


def accepts_groups(fn) -> bool:
    """Whether a convolution kernel takes ``groups=`` (the kernels before grouped
    convolution did not)."""
    try:
        return "groups" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def route_of(cache) -> str:
    """The route a CPU override took, read off its cache."""
    return str(getattr(cache, "route", None) or type(cache).__name__)


def products_flops(n, c, f, k, groups, oh, ow) -> int:
    """Floating-point operations of one of the three products (forward, dW or dx)."""
    return 2 * n * f * oh * ow * (c // groups) * k * k


def sweep(backend, torch, shapes, repeats, min_seconds=0.005, log=print):
    """One row per shape (see the module docstring); A/B interleaved, run 0 a warm-up."""
    kernels = backend.kernels
    grouped_ok = accepts_groups(kernels.conv2d_forward)
    rows = []
    for n, c, size, f, k, stride, pad, groups, what in shapes:
        row = {"what": what, "n": n, "c": c, "size": size, "f": f, "k": k, "stride": stride,
               "padding": pad, "groups": groups}
        if groups > 1 and not grouped_ok:
            row["skipped"] = "the installed conv2d_forward takes no groups="
            rows.append(row)
            continue
        row.update(_one_shape(backend, torch, row, repeats, min_seconds))
        rows.append(row)
        log(format_row(row))
    return rows


def _one_shape(backend, torch, s, repeats, min_seconds):
    rng = np.random.default_rng(0)
    n, c, size, f, k, stride, pad, groups = (s[key] for key in
                                             ("n", "c", "size", "f", "k", "stride", "padding",
                                              "groups"))
    x = rng.standard_normal((n, c, size, size), dtype=np.float32)
    w = rng.standard_normal((f, c // groups, k, k), dtype=np.float32)
    w /= np.float32(np.sqrt(c // groups * k * k))
    b = rng.standard_normal(f, dtype=np.float32)
    kernels = backend.kernels
    extra = {"groups": groups} if groups > 1 else {}
    xa, wa, ba = backend.asarray(x), backend.asarray(w), backend.asarray(b)
    with backend.activate():
        y, cache = kernels.conv2d_forward(xa, wa, ba, stride, pad, **extra)
    oh, ow = y.shape[2], y.shape[3]
    dy = rng.standard_normal(tuple(y.shape), dtype=np.float32)
    dya = backend.asarray(dy)

    F = torch.nn.functional
    xt, wt, bt, dyt = (torch.from_numpy(a) for a in (x, w, b, dy))
    conv_backward = torch.ops.aten.convolution_backward

    def torch_backward(mask):
        return conv_backward(dyt, xt, wt, [f], [stride] * 2, [pad] * 2, [1, 1], False, [0, 0],
                             groups, mask)

    with torch.no_grad():
        ref_y = F.conv2d(xt, wt, bt, stride, pad, 1, groups).numpy()
        ref_dw = torch_backward([False, True, True])[1].numpy()
    with backend.activate():
        ours_dw = backend.to_numpy(kernels.conv2d_backward(dya, wa, cache, need_dx=False)[1])
    err = max(_rel_err(backend.to_numpy(y), ref_y), _rel_err(ours_dw, ref_dw))

    def ours(op):
        with backend.activate():
            if op == "forward":
                return kernels.conv2d_forward(xa, wa, ba, stride, pad, **extra)
            return kernels.conv2d_backward(dya, wa, cache, need_dx=op == "full_backward")

    def theirs(op):
        with torch.no_grad():
            if op == "forward":
                return F.conv2d(xt, wt, bt, stride, pad, 1, groups)
            return torch_backward([op == "full_backward", True, True])

    times = {(side, op): [] for side in ("portacnn", "torch") for op in OPS}
    calls = {op: _calls_for(lambda: ours(op), min_seconds) for op in OPS}
    for r in range(repeats + 1):
        sides = [("portacnn", ours), ("torch", theirs)]
        if r % 2:
            sides.reverse()
        for op in OPS:
            for side, fn in sides:
                t0 = CLOCK()
                for _ in range(calls[op]):
                    fn(op)
                if r:
                    times[side, op].append((CLOCK() - t0) / calls[op])
    flops = products_flops(n, c, f, k, groups, oh, ow)
    out = {"out_size": [oh, ow], "route": route_of(cache), "flops_per_product": flops,
           "max_rel_err": err}
    for side in ("portacnn", "torch"):
        times[side, "input_grad"] = [a - b for a, b in zip(times[side, "full_backward"],
                                                           times[side, "weight_grad"])]
    for op in ("forward", "weight_grad", "input_grad"):
        mine, peer = times["portacnn", op], times["torch", op]
        ms_ours, ms_theirs = statistics.median(mine) * 1e3, statistics.median(peer) * 1e3
        pairs = [(a, b) for a, b in zip(mine, peer) if a > 0 and b > 0]
        out[op] = {"portacnn_ms": ms_ours, "torch_ms": ms_theirs,       # a difference may be
                   "ratio": statistics.median([a / b for a, b in pairs]) if pairs else None,
                   "portacnn_gflops": _gflops(flops, ms_ours),         # <= 0 on toy shapes
                   "torch_gflops": _gflops(flops, ms_theirs)}
    return out


def _calls_for(fn, min_seconds):
    """How many calls make one timed sample last at least ``min_seconds`` (at most 200)."""
    t0 = CLOCK()
    fn()
    once = max(CLOCK() - t0, 1e-6)
    return max(1, min(200, int(np.ceil(min_seconds / once))))


def _gflops(flops, ms):
    return flops / (ms * 1e-3) / 1e9 if ms > 0 else None


def _rel_err(a, b):
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-30))


def label(row) -> str:
    """"64x16x32² ·32@3x3 s2 g4": batch x channels x size², filters @ kernel, stride, groups."""
    text = (f"{row['n']}x{row['c']}x{row['size']}² {row['f']}@{row['k']}x{row['k']}"
            f" s{row['stride']}")
    return text + (f" g{row['groups']}" if row["groups"] > 1 else "")


def ratio_text(ratio) -> str:
    return "n/a" if ratio is None else f"{ratio:.2f}x"


def format_row(row) -> str:
    if "skipped" in row:
        return f"    {label(row):<28} skipped: {row['skipped']}"
    parts = [f"{name} {ratio_text(row[op]['ratio'])} ({row[op]['portacnn_gflops'] or 0:.0f}/"
             f"{row[op]['torch_gflops'] or 0:.0f} GF/s)"
             for name, op in (("fwd", "forward"), ("dW", "weight_grad"), ("dx", "input_grad"))]
    return f"    {label(row):<28} {row['route']:<14} " + ", ".join(parts)
