"""The paper's learning rate (§3.4): constant for 5 epochs, then halved every half epoch."""

from __future__ import annotations

import math

from dist_s2s.config import OptimConfig


def learning_rate(optim: OptimConfig, epochs_done: float) -> float:
    """lr after `epochs_done` (fractional) epochs: lr0 before decay_start_epoch, then
    lr0 / 2 at decay_start_epoch, / 4 half an epoch later, and so on (0.7 → 0.35 at epoch 5)."""
    if epochs_done < optim.decay_start_epoch:
        return optim.lr
    halvings = math.floor((epochs_done - optim.decay_start_epoch) / optim.halve_lr_every) + 1
    return optim.lr * 0.5 ** halvings
