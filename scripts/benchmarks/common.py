"""What every benchmark section shares: statistics, the MNIST-shaped data, clocks that wait for
the devices, the PyTorch peer, and the machine's description."""

from __future__ import annotations

import math
import os
import platform
import re
import statistics
import time
from pathlib import Path

import numpy as np

import portacnn
from portacnn.data import load_sample, normalize

LR, MOMENTUM = 0.01, 0.9

def summarize(times):
    return {"median": statistics.median(times), "min": min(times), "max": max(times),
            "runs": len(times)}


def fmt(stat, unit="s", scale=1.0):
    return (f"{stat['median'] * scale:.3f} [{stat['min'] * scale:.3f}-{stat['max'] * scale:.3f}]"
            f" {unit}")


def dataset(n, dtype):
    (x, y), _ = load_sample()
    reps = math.ceil(n / len(x))
    x = np.concatenate([x] * reps)[:n]
    y = np.concatenate([y] * reps)[:n].astype(np.int64)
    return normalize(x, dtype=dtype), y


class Peer:
    """PyTorch, the peer: the module and the device its tensors live on (the GPU portacnn
    runs on, or the CPU).

    PyTorch lets cuDNN's float32 convolutions (and, where allowed, cuBLAS's products) use TF32
    on Ampere and newer GPUs: 10-bit mantissas, faster and less exact. CuPy computes float32
    in full, so the peer turns TF32 off (``tf32`` False) and both sides do the same arithmetic.
    """

    def __init__(self, torch, backend):
        self.torch = torch
        cuda = backend.device_info().get("cuda_device") if backend.accelerator else None
        self.device = torch.device("cpu" if cuda is None else f"cuda:{cuda}")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        self.tf32 = False

    def tensor(self, array):
        return self.torch.from_numpy(np.ascontiguousarray(array)).to(self.device)

    def synchronize(self):
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)


def timed(fn, backend, peer=None):
    """Seconds ``fn()`` takes, every device synchronised before each clock read."""
    syncs = [backend.synchronize] + ([peer.synchronize] if peer is not None else [])
    for sync in syncs:
        sync()
    t0 = time.perf_counter()
    fn()
    for sync in syncs:
        sync()
    return time.perf_counter() - t0


def machine_info(backend):
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "numpy": np.__version__, "portacnn": portacnn.__version__,
            "backend": backend.description, "device": backend.device_info()}


def device_line(info):
    """The header line naming a GPU: "GPU NVIDIA H100 (cuda:0, 79.1 GiB, sm 9.0), driver CUDA
    12.8, runtime 12.9, CuPy 14.2.0"; empty for the CPU."""
    if "gpu" not in info:
        return ""
    return (f"GPU {info['gpu']} (cuda:{info.get('cuda_device')}, {info.get('memory_gib')} GiB, "
            f"sm {info.get('compute_capability')}), driver CUDA {info.get('cuda_driver')}, "
            f"runtime {info.get('cuda_runtime')}, CuPy {info.get('cupy')}, "
            f"NVRTC {info.get('nvrtc')}")


def peer_timed(fn, peer):
    """Seconds ``fn()`` takes on the peer alone, its device synchronised around the clock."""
    peer.synchronize()
    t0 = time.perf_counter()
    fn()
    peer.synchronize()
    return time.perf_counter() - t0


def peak_bytes(fn, backend):
    """The peak memory ``fn()`` allocates on the backend's device (None if unknown)."""
    with backend.memory_peak() as peak:
        fn()
        backend.synchronize()
    return peak.bytes


def machine_kind(info):
    """A file name for the machine: "cpu-amd-epyc-2core" or "gpu-nvidia-h100" (docs/bench/)."""
    gpu = info.get("device", {}).get("gpu")
    if gpu:
        return "gpu-" + _slug(gpu)
    words = re.sub(r"\(.*?\)|\b(processor|cpu|\d+-core)\b", " ", info["cpu"], flags=re.I)
    return f"cpu-{_slug(' '.join(words.split()[:2]))}-{info['cores']}core"


def _slug(text):
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def load_average():
    """The 1, 5 and 15 minute load averages (what else ran on the machine)."""
    return list(os.getloadavg())
