"""The PyTorch backend: torch tensors through ``array_api_compat.torch``, on the CPU or a CUDA
device. An optional backend for tests (PyTorch is an oracle, never a dependency)."""

from __future__ import annotations

import contextlib

import array_api_compat

from .base import Backend
from .errors import import_library
from .memory import MemoryPeak
from .registry import register

__all__ = ["TorchBackend"]


@register
class TorchBackend(Backend):
    """torch tensors on ``device`` (default ``"cpu"``)."""

    library = "torch"
    aliases = ()

    def __init__(self, xp, device, native):
        super().__init__(xp, device, native)
        self.host_sync_is_free = device.type == "cpu"
        self.accelerator = device.type != "cpu"
        self.device_data_limit = 2**30 if self.accelerator else None

    @classmethod
    def parse(cls, key: str):
        return key == "torch", None

    @classmethod
    def create(cls, device=None) -> "TorchBackend":
        torch = import_library("torch", "pip install torch (an optional backend)")
        return cls(array_api_compat.array_namespace(torch.empty(0)),
                   torch.device(device if device is not None else "cpu"), native=torch)

    @staticmethod
    def array_to_numpy(x):
        """A tensor on any device, with or without autograd history, as a host NumPy array."""
        return x.detach().cpu().numpy()

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            self.native.cuda.synchronize(self.device)

    def memory_peak(self) -> MemoryPeak:
        """Peak bytes allocated on a CUDA device inside the block (torch's allocator
        statistics); None on the CPU, whose allocations torch does not report."""
        return MemoryPeak(_TorchPeak(self.native, self.device))

    def limit_threads(self, threads):
        blas = super().limit_threads(threads)
        if threads is None:
            return blas
        stack = contextlib.ExitStack()
        stack.enter_context(blas)
        before = self.native.get_num_threads()
        self.native.set_num_threads(threads)
        stack.callback(self.native.set_num_threads, before)
        return stack

    def thread_info(self) -> dict:
        return {**super().thread_info(), "torch": self.native.get_num_threads()}


class _TorchPeak:
    # torch's CUDA allocator statistics, for MemoryPeak; None on the CPU.
    def __init__(self, torch, device):
        self.torch, self.device = torch, device

    def start(self):
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)
            self.torch.cuda.reset_peak_memory_stats(self.device)
            self.base = self.torch.cuda.memory_allocated(self.device)

    def stop(self):
        if self.device.type != "cuda":
            return None
        self.torch.cuda.synchronize(self.device)
        return self.torch.cuda.max_memory_allocated(self.device) - self.base
