"""Attention against none at the same budget: BLEU by source length, from the committed results.

    .venv/bin/python study/attention.py          # → docs/reproduction/attention_bleu_by_length.png + a table

Reads `benchmarks/results/bleu-multi30k-main.json` (no attention) and `bleu-multi30k-attention.json` (the same
config with `model.attention: luong`), their test splits' BLEU by source length (`evaluate`'s bins, sacreBLEU
on each bin's sentences), and draws both, as Luong et al. (2015, Figure 6) did.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from report import save_figure  # noqa: E402  (study/ beside this script)

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
MODELS = {"no attention (`multi30k.yaml`)": "bleu-multi30k-main.json",
          "Luong attention (`multi30k-attention.yaml`)": "bleu-multi30k-attention.json"}


def by_length(name: str, split: str) -> list[dict]:
    """A result file's BLEU-by-source-length bins of `split` that hold sentences."""
    result = json.loads((RESULTS / name).read_text())
    return [b for b in next(r["bleu_by_length"] for r in result["results"] if r["split"] == split) if b["sentences"]]


def label(bin_: dict) -> str:
    return f"{bin_['low']}+" if math.isinf(bin_["high"]) else f"{bin_['low']}–{bin_['high'] - 1}"


def table(split: str) -> str:
    bins = {model: by_length(name, split) for model, name in MODELS.items()}
    (none, none_bins), (attention, attention_bins) = bins.items()
    lines = [f"| source words ({split}) | sentences | {none} | {attention} | gain |", "|---|---:|---:|---:|---:|"]
    for plain, attends in zip(none_bins, attention_bins):
        lines.append(f"| {label(plain)} | {plain['sentences']} | {plain['bleu']:.1f} | {attends['bleu']:.1f} | "
                     f"{attends['bleu'] - plain['bleu']:+.1f} |")
    return "\n".join(lines)


def plot(split: str, out: Path) -> Path:
    figure, axes = plt.subplots(figsize=(6, 3.6))
    for model, name in MODELS.items():
        bins = by_length(name, split)
        axes.plot([label(b) for b in bins], [b["bleu"] for b in bins], marker="o", label=model.split(" (")[0])
    axes.set_xlabel("source sentence length (words)")
    axes.set_ylabel("BLEU")
    axes.set_title(f"Multi30k {split}: BLEU by source length, the same budget")
    axes.grid(alpha=0.3)
    axes.legend()
    return save_figure(figure, out / f"attention_{split}_bleu_by_length.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "reproduction")
    parser.add_argument("--split", default="test2016")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print(table(args.split))
    print(f"\nwrote {plot(args.split, args.out)}")


if __name__ == "__main__":
    main()
