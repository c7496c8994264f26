"""Kernel sets: the kernels a backend runs, as the attributes of one object.

:class:`Kernels` is the portable set: every attribute is the portable function of that name,
so ``Kernels.conv2d_forward`` *is* :func:`portacnn.kernels.conv.conv2d_forward`. A backend
exposes its set as ``backend.kernels``, and every layer, the optimizers and the training loop
call through it (``self.backend.kernels.conv2d_forward(x, w, b, ...)``), so go-to-definition
leads from a layer to the function that runs.

A faster set for some hardware is a subclass that replaces a few attributes
(:class:`portacnn.kernels.cpu.CpuKernels`, the NumPy backend's): an override is found by
reading that class, and every attribute it does not replace is the portable one. An override
takes the same arguments and returns the same values as the portable kernel of its name (its
cache may differ: only its own backward reads it).

Besides the kernels, a set carries the three choices that decide how work is cut for its
hardware: ``train_chunk`` and ``infer_chunk`` (the training loop runs larger batches as chunks
of at most that many images) and ``fuse_updates`` (the optimizers update all parameters with
one set of operations over flat arrays).
"""

from __future__ import annotations

from . import activations, batchnorm, conv, dense, dropout, losses, merge, pooling, upsample

__all__ = ["Kernels"]


class Kernels:
    """The portable kernels: written once against the array API standard, run on every backend.

    Attributes (besides the kernel functions):
        train_chunk: most images one forward+backward pass takes at once (a larger training
            batch runs as chunks with summed gradients), or None for no limit.
        infer_chunk: most images one inference forward pass takes at once, or None.
        fuse_updates: True to update all parameters with one set of operations over flat
            arrays (:mod:`portacnn.optim`): a few kernel launches per step instead of a few per
            parameter, what a GPU wants.
    """

    # convolution and pooling (:mod:`.conv`, :mod:`.pooling`)
    conv2d_forward = staticmethod(conv.conv2d_forward)
    conv2d_backward = staticmethod(conv.conv2d_backward)
    max_pool2d_forward = staticmethod(pooling.max_pool2d_forward)
    max_pool2d_backward = staticmethod(pooling.max_pool2d_backward)
    min_pool2d_forward = staticmethod(pooling.min_pool2d_forward)
    min_pool2d_backward = staticmethod(pooling.min_pool2d_backward)
    avg_pool2d_forward = staticmethod(pooling.avg_pool2d_forward)
    avg_pool2d_backward = staticmethod(pooling.avg_pool2d_backward)
    global_avg_pool2d_forward = staticmethod(pooling.global_avg_pool2d_forward)
    global_avg_pool2d_backward = staticmethod(pooling.global_avg_pool2d_backward)
    upsample_nearest_forward = staticmethod(upsample.upsample_nearest_forward)
    upsample_nearest_backward = staticmethod(upsample.upsample_nearest_backward)
    # dense, normalisation, dropout (:mod:`.dense`, :mod:`.batchnorm`, :mod:`.dropout`)
    dense_forward = staticmethod(dense.dense_forward)
    dense_backward = staticmethod(dense.dense_backward)
    batchnorm_forward = staticmethod(batchnorm.batchnorm_forward)
    batchnorm_backward = staticmethod(batchnorm.batchnorm_backward)
    dropout_forward = staticmethod(dropout.dropout_forward)
    dropout_backward = staticmethod(dropout.dropout_backward)
    # merging tensors of a graph model (:mod:`.merge`)
    add_forward = staticmethod(merge.add_forward)
    add_backward = staticmethod(merge.add_backward)
    concatenate_forward = staticmethod(merge.concatenate_forward)
    concatenate_backward = staticmethod(merge.concatenate_backward)
    # activations (:mod:`.activations`)
    relu = staticmethod(activations.relu)
    relu_backward = staticmethod(activations.relu_backward)
    tanh = staticmethod(activations.tanh)
    tanh_backward = staticmethod(activations.tanh_backward)
    sigmoid = staticmethod(activations.sigmoid)
    sigmoid_backward = staticmethod(activations.sigmoid_backward)
    softmax = staticmethod(activations.softmax)
    # losses (:mod:`.losses`): each returns (mean loss, dL/dlogits)
    softmax_cross_entropy = staticmethod(losses.softmax_cross_entropy)
    mse = staticmethod(losses.mse)

    # how work is cut for the hardware
    train_chunk: int | None = None
    infer_chunk: int | None = None
    fuse_updates = True

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
