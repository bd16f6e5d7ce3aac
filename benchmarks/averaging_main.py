"""Checkpoint averaging on the main job: the last N epoch checkpoints averaged, against the last alone and the
best by valid perplexity, BLEU on valid and test2016.

    .venv/bin/python benchmarks/averaging_main.py --output benchmarks/results/averaging-main.json

Trains `configs/multi30k.yaml` as it is but for a checkpoint every epoch (227 batches), the last 5 kept and
the best by valid perplexity (`train.keep_best`), then averages the last 2, 3 and 5 with `dist-s2s average` and
evaluates every candidate with `dist-s2s evaluate` at the main job's decoding (beam 12, α 0.6). The choice a
user would make is the one with the best valid BLEU; test2016 is reported for all of them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from dist_s2s.train.checkpoint import CheckpointDir

CONFIG = "configs/multi30k.yaml"
EVERY_EPOCH = ["--train.checkpoint_every=227", "--train.valid_every=227", "--train.keep_checkpoints=5",
               "--train.keep_best=true", "--eval.after_training=false"]


def dist_s2s(*arguments: str) -> None:
    command = [sys.executable, "-m", "dist_s2s", *arguments]
    print("$ dist-s2s " + " ".join(arguments), flush=True)
    subprocess.run(command, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", default="runs/averaging-main")
    parser.add_argument("--last", type=int, nargs="+", default=[2, 3, 5])
    parser.add_argument("--splits", nargs="+", default=["valid", "test2016"])
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    run_dir = Path(args.run_dir)
    overrides = [f"--train.run_dir={run_dir}", *EVERY_EPOCH]
    checkpoints = CheckpointDir(run_dir / "checkpoints", 5)
    finished = run_dir / "trained"  # written once training ends: a rerun goes straight to the evaluations
    if not finished.is_file():
        started = time.perf_counter()
        dist_s2s("train", "--config", CONFIG, *overrides, *(["--train.resume=true"] if checkpoints.latest() else []))
        finished.write_text(f"{time.perf_counter() - started:.1f}\n")
    train_seconds = float(finished.read_text())
    candidates = {"last": str(checkpoints.latest()), "best": str(checkpoints.best())}
    for n in args.last:
        output = run_dir / f"average-last{n}.pt"
        if not output.is_file():
            dist_s2s("average", "--config", CONFIG, *overrides, "--last", str(n), "--output", str(output))
        candidates[f"average of the last {n}"] = str(output)
    results = {}
    for label, checkpoint in candidates.items():
        for split in args.splits:
            scores_path = run_dir / "eval-json" / f"{label.replace(' ', '-')}-{split}.json"
            if not scores_path.is_file():
                scores_path.parent.mkdir(parents=True, exist_ok=True)
                dist_s2s("evaluate", "--config", CONFIG, *overrides, "--checkpoint", checkpoint, "--split", split,
                         "--output", str(scores_path))
            scores = json.loads(scores_path.read_text())
            results.setdefault(label, {"checkpoint": checkpoint})[split] = {
                key: scores[key] for key in ("bleu", "chrf", "perplexity", "length_ratio", "signature")}
    index = json.loads((run_dir / "checkpoints" / "index.json").read_text())
    record = {"config": CONFIG, "overrides": EVERY_EPOCH, "candidates": results,
              "chosen_on_valid": max(results, key=lambda label: results[label]["valid"]["bleu"]),
              "kept_checkpoints": [e["step"] for e in index["checkpoints"]], "best": index.get("best"),
              "valid_ppl_by_checkpoint": index.get("evaluations"), "train_seconds": round(train_seconds, 1),
              "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                       text=True).stdout.strip(), "date": time.strftime("%Y-%m-%d")}
    Path(args.output).write_text(json.dumps(record, indent=2) + "\n")
    for label, scores in results.items():
        print(f"{label:<24} " + "  ".join(f"{split} BLEU {scores[split]['bleu']:.2f}" for split in args.splits))


if __name__ == "__main__":
    main()
