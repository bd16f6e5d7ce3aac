"""The loss-curve PNG, drawn from the local metrics record."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def loss_curve(metrics_file: Path, out: Path) -> Path:
    """Training loss per sentence and validation perplexity against step."""
    train, valid = [], []
    for line in Path(metrics_file).read_text().splitlines():
        record = json.loads(line)
        if "train/loss" in record:
            train.append((record["step"], record["train/loss"]))
        if "valid/ppl" in record:
            valid.append((record["step"], record["valid/ppl"]))
    figure, left = plt.subplots(figsize=(7, 4))
    if train:
        left.plot(*zip(*train), color="tab:blue", label="train loss / sentence")
    left.set_xlabel("step")
    left.set_ylabel("train loss per sentence", color="tab:blue")
    if valid:
        right = left.twinx()
        right.plot(*zip(*valid), "o-", color="tab:red", label="valid perplexity")
        right.set_ylabel("validation perplexity", color="tab:red")
        right.set_yscale("log")
    figure.tight_layout()
    figure.savefig(out, dpi=100)
    plt.close(figure)
    return out
