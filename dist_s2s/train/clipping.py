"""Gradient-norm rescaling exactly as the paper states it (§3.4), in one place.

"if s = ||g||_2 > 5, we set g = 5g / s". The single-device trainer and the pipeline (whose
stages each hold part of g) both use `rescale`, so their updates match to the last bit.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


def squared_norm(parameters: Iterable[torch.nn.Parameter]) -> torch.Tensor:
    """Σ ||grad||² over the parameters that have a gradient, in float64, on their device. Each parameter's
    norm is the same computation wherever the parameter lives (one device or any stage), and only the sum
    over parameters is grouped otherwise by a pipeline: that sum is float64, so its order costs nothing
    visible (each norm in float64 as well would cost far more: docs/benchmarks.md)."""
    norms = [torch.linalg.vector_norm(p.grad.detach()) for p in parameters if p.grad is not None]
    if not norms:
        return torch.zeros((), dtype=torch.float64)
    return torch.stack(norms).double().square().sum()


def rescale(parameters: Iterable[torch.nn.Parameter], norm: torch.Tensor | float, max_norm: float) -> None:
    """Scale every gradient by max_norm / norm when norm exceeds max_norm, on the device: the factor is
    min(1, max_norm / norm), and multiplying by exactly 1.0 leaves a gradient bit-for-bit as it was, so no
    host has to read the norm to decide."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if grads:
        scale = torch.clamp(max_norm / torch.as_tensor(norm, dtype=torch.float64, device=grads[0].device), max=1.0)
        torch._foreach_mul_(grads, scale.to(grads[0].dtype))


def clip_gradients(parameters: list[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """Rescale in place; returns the norm before rescaling (what the log reports), a float64 device tensor."""
    norm = squared_norm(parameters).sqrt()
    rescale(parameters, norm, max_norm)
    return norm
