"""The NumPy backend's kernel set: :class:`CpuKernels`, the portable set with CPU overrides.

Everything that makes portacnn fast on a CPU is in this class: which kernels are replaced, how
large a batch runs at once, and how the optimizers update. Each override takes the same
arguments and returns the same values as the portable kernel of its name and is tested against
it and against the naive loops on the same geometries (tests/test_cpu_overrides.py). The
portable kernels stay the readable reference; what changes in the overrides is memory order
and the number of passes over memory, which on a CPU decide whether the working set stays in
cache (docs/performance.md says what each buys).

| override | what it does instead of the portable kernel |
|---|---|
| ``conv2d_forward`` / ``conv2d_backward`` | three routes, chosen per call (:mod:`.cpu_conv`) |
| ``max_pool2d_*``, ``min_pool2d_*`` | separable forward, no window stack; backward by slices (:mod:`.cpu_pooling`) |
| ``avg_pool2d_*`` | separable window sums; backward by slices (:mod:`.cpu_pooling`) |
| ``relu_backward`` | a multiplication by the mask, not NumPy's slow ``where`` (:mod:`.cpu_activations`) |
"""

from __future__ import annotations

from . import cpu_activations, cpu_conv, cpu_pooling
from .sets import Kernels

__all__ = ["CpuKernels"]


class CpuKernels(Kernels):
    """:class:`~.sets.Kernels` with the CPU's overrides and work sizes.

    Training batches run in chunks of ``train_chunk`` images (gradients summed) and inference
    in chunks of ``infer_chunk``, so each chunk's working set stays in a CPU's L2 cache; each
    parameter is updated by itself (``fuse_updates = False``), its arrays staying in cache,
    rather than gathered into one flat array.
    """

    conv2d_forward = staticmethod(cpu_conv.conv2d_forward)
    conv2d_backward = staticmethod(cpu_conv.conv2d_backward)
    max_pool2d_forward = staticmethod(cpu_pooling.max_pool2d_forward)
    max_pool2d_backward = staticmethod(cpu_pooling.max_pool2d_backward)
    min_pool2d_forward = staticmethod(cpu_pooling.min_pool2d_forward)
    min_pool2d_backward = staticmethod(cpu_pooling.min_pool2d_backward)
    avg_pool2d_forward = staticmethod(cpu_pooling.avg_pool2d_forward)
    avg_pool2d_backward = staticmethod(cpu_pooling.avg_pool2d_backward)
    relu_backward = staticmethod(cpu_activations.relu_backward)

    train_chunk = 32
    infer_chunk = 128
    fuse_updates = False
