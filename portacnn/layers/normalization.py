"""Batch normalisation: :class:`BatchNorm2D` per channel of (N, C, H, W) input and
:class:`BatchNorm1D` per feature of (N, F) input, with running statistics as buffers."""

from __future__ import annotations

from ..scalars import is_real, positive_int, positive_real
from .base import Layer, _maybe_build_now


class _BatchNorm(Layer):
    _ndim = None
    samples_independent = False      # batch statistics couple the samples

    def __init__(self, num_features=None, *, eps: float = 1e-5, momentum: float = 0.1,
                 dtype=None, device=None, name=None):
        super().__init__(dtype=dtype, name=name)
        if num_features is not None:
            num_features = positive_int(num_features, "num_features")
        if not (is_real(momentum) and 0.0 <= momentum <= 1.0):
            raise ValueError(f"momentum must be in [0, 1], got {momentum!r}")
        self.num_features = num_features
        self.eps, self.momentum = positive_real(eps, "eps"), float(momentum)
        # None: statistics over this process's rows; DataParallel.fit sets a function that
        # gathers every process's ((k, C) -> (R, k, C)), for statistics over the whole batch
        self.gather_statistics = None
        shape = None if num_features is None else (num_features,) + (None,) * (self._ndim - 2)
        _maybe_build_now(self, shape, device, None)

    def output_shape(self, input_shape):
        if len(input_shape) != self._ndim - 1:
            raise ValueError(f"{self.name} expects {self._ndim}-D input, i.e. per-sample shape of "
                             f"{self._ndim - 1} axes, got {tuple(input_shape)}")
        if self.num_features is not None and input_shape[0] != self.num_features:
            raise ValueError(f"{self.name} has {self.num_features} features, got "
                             f"{input_shape[0]}")
        return tuple(input_shape)

    _strict_shape = False

    def param_shapes(self, input_shape):
        return {"weight": (input_shape[0],), "bias": (input_shape[0],)}

    def buffer_shapes(self, input_shape):
        return {"running_mean": (input_shape[0],), "running_var": (input_shape[0],)}

    def _build(self, input_shape, rng):
        self.num_features = input_shape[0]
        xp, dev = self.xp, self.backend.device
        params, buffers = self.param_shapes(input_shape), self.buffer_shapes(input_shape)
        self.params["weight"] = xp.ones(params["weight"], dtype=self.dtype, device=dev)
        self.params["bias"] = xp.zeros(params["bias"], dtype=self.dtype, device=dev)
        self.buffers["running_mean"] = xp.zeros(buffers["running_mean"], dtype=self.dtype,
                                                device=dev)
        self.buffers["running_var"] = xp.ones(buffers["running_var"], dtype=self.dtype,
                                              device=dev)

    def describe(self):
        return f"{self.num_features}, momentum {self.momentum}"

    def forward(self, x):
        if x.ndim != self._ndim:
            raise ValueError(f"{self.name} expects {self._ndim}-D input, got shape {tuple(x.shape)}")
        return super().forward(x)

    def _forward(self, x):
        y, cache, mean, var = self.kernels.batchnorm_forward(
            x, self.params["weight"], self.params["bias"], self.buffers["running_mean"],
            self.buffers["running_var"], training=self.training, momentum=self.momentum,
            eps=self.eps, gather=self.gather_statistics if self.training else None)
        self.buffers["running_mean"], self.buffers["running_var"] = mean, var
        self._cache = cache if self.training else None
        return y

    def _backward(self, dy):
        dx, self.grads["weight"], self.grads["bias"] = self.kernels.batchnorm_backward(
            dy, self._cache)
        return dx

    def get_config(self):
        return {"num_features": self.num_features, "eps": self.eps, "momentum": self.momentum,
                **super().get_config()}


class BatchNorm2D(_BatchNorm):
    """Batch normalisation of (N, C, H, W) input per channel, over (N, H, W).

    Learnable scale ``params["weight"]`` (ones) and shift ``params["bias"]`` (zeros), shape (C,);
    ``buffers["running_mean"]`` / ``["running_var"]`` updated with ``momentum`` in training (as in
    PyTorch: unbiased variance) and used in eval mode. Saved with checkpoints. Under
    :class:`~portacnn.distributed.DataParallel` the statistics are those of the whole batch,
    every process's rows (``gather_statistics``), as in one process.
    """

    _ndim = 4


class BatchNorm1D(_BatchNorm):
    """Batch normalisation of (N, F) dense activations per feature, over N (see
    :class:`BatchNorm2D`)."""

    _ndim = 2
