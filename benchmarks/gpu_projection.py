"""8-GPU projection of the paper's layout from the GPU cost model (`dist_s2s/bench/gpu_model.py`).

    .venv/bin/python benchmarks/gpu_projection.py --output benchmarks/results/projection-h100-paper.json
    .venv/bin/python benchmarks/gpu_projection.py --attention \
        --output benchmarks/results/projection-h100-paper-attention.json

A projection, not a measurement: one H100 SXM vs the paper's 8-GPU layout (4 LSTM layer stages +
4 softmax-shard stages, batch 128, 30 + 30 words a pair) under 1F1B at 4 and 8 micro-batches and
under the wavefront, in fp32, with every constant halved and doubled in turn (`--attention`: with Luong's
attention on the top stage). Prints the Markdown tables docs/benchmarks.md shows.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from dist_s2s.bench.gpu_model import GpuConstants, PaperShape, projection, sensitivity
from dist_s2s.config import load_config
from dist_s2s.provenance import provenance

COLUMNS = ("one_gpu", "1f1b_m4", "1f1b_m8", "wavefront")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunk-steps", type=int, nargs="+", default=[1, 2, 4, 8, 16, 31])
    parser.add_argument("--attention", action="store_true", help="the model with Luong's global attention")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    shape, constants = PaperShape(attention=args.attention), GpuConstants()
    by_chunk = {steps: projection(shape, constants, chunk_steps=steps) for steps in args.chunk_steps}
    best = max(by_chunk, key=lambda steps: by_chunk[steps]["wavefront"])
    rows = sensitivity(shape, chunk_steps=best)
    listed = ", ".join(f"{steps}: {value['wavefront']:,.0f}" for steps, value in by_chunk.items())
    print(f"chunk steps → wavefront words/s: {listed}")
    print("\n| constant | × | one GPU | 1F1B M=4 | 1F1B M=8 | wavefront | wavefront ÷ one GPU |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['constant']} | {row['factor']:g} | " + " | ".join(f"{row[c]:,.0f}" for c in COLUMNS)
              + f" | {row['wavefront'] / row['one_gpu']:.2f}× |")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        overrides = ["--model.attention=luong"] if args.attention else []
        args.output.write_text(json.dumps({
            **provenance(load_config("configs/paper.yaml", overrides), config_path="configs/paper.yaml",
                         overrides=overrides),
            "kind": "projection (cost model, not measured)", "shape": asdict(shape), "constants": asdict(constants),
            "wavefront_by_chunk_steps": {str(s): round(v["wavefront"], 1) for s, v in by_chunk.items()},
            "chunk_steps": best, "sensitivity": rows, "paper_words_per_sec": {"1_gpu": 1700, "8_gpus": 6300},
        }, indent=2) + "\n")


if __name__ == "__main__":
    main()
