"""What every benchmark run measures besides time: the device's matrix-product rate and peak memory."""

from __future__ import annotations

import resource
import time

import torch

from dist_s2s.device import synchronize


def matmul_rate(device: torch.device, *, precision: str = "fp32", size: int | None = None, repeats: int = 5) -> float:
    """FLOP/s of a size × size × size product on `device` in `precision` (bf16 operands for bf16, TF32
    allowed for tf32), with the current threads: the best of `repeats`, the limit MFU is stated against.
    The default size is 2048 on a CPU and 8192 on a GPU, where a smaller product cannot fill the chip."""
    from dist_s2s.train.precision import configure

    size = size or (8192 if device.type == "cuda" else 2048)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    configure(precision)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        started = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - started)
    configure("fp32")
    return 2 * size**3 / best


def peak_memory_mb(device: torch.device) -> float:
    """Peak resident memory of this process (CPU), or peak allocated device memory (GPU)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu"
