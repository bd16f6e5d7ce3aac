"""Which torch device a command runs on: one decision, shared by training, decoding and benchmarks."""

from __future__ import annotations

import torch


def pick_device(name: str) -> torch.device:
    """`auto` is CUDA when a GPU is visible, else the CPU; anything else is a torch device string."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
