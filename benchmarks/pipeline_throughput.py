"""Training words/s of `dist-s2s train`: one device vs the pipeline with 1, 2, 4 stages, same total threads.

    DS_ACCELERATOR=cpu .venv/bin/python benchmarks/pipeline_throughput.py --config configs/tiny.yaml
    DS_ACCELERATOR=cpu .venv/bin/python benchmarks/pipeline_throughput.py --config configs/multi30k.yaml --steps 40

Every run is the real command (`dist-s2s train`, or `torchrun -m dist_s2s train` for the
pipeline) on the same prepared batches from the same seed; words/s is the trainer's own
`train/words_per_sec` over the second half of the steps (the first half warms up), so
validation and checkpoints stay out of it. Threads: the machine's cores shared evenly among
the ranks, at least one each (4 stages on 2 cores oversubscribe; the result says so).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from dist_s2s.config import load_config
from dist_s2s.parallel.trainer import bubble_fraction

REPO = Path(__file__).resolve().parents[1]


def run(config: str, out_dir: str, stages: int | None, steps: int, micro: int, cores: int,
        overrides: list[str]) -> dict:
    """One training run; stages None is the single-device trainer."""
    ranks = stages or 1
    threads = max(1, cores // ranks)
    with tempfile.TemporaryDirectory() as scratch:
        run_dir = Path(scratch) / "run"
        arguments = ["train", "--config", config, f"--data.out_dir={out_dir}", f"--train.run_dir={run_dir}",
                     f"--train.max_steps={steps}", f"--train.log_every={steps // 2}", "--train.valid_every=1000000",
                     "--train.checkpoint_every=1000000", "--train.device=cpu", *overrides]
        if stages is None:
            command = [sys.executable, "-m", "dist_s2s", *arguments]
        else:
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={stages}",
                       "-m", "dist_s2s", *arguments, f"--parallel.stages={stages}",
                       f"--parallel.micro_batches={micro}"]
        env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": str(threads), "TMPDIR": scratch,
               "MLFLOW_DISABLE_TELEMETRY": "true"}
        started = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
        if result.returncode != 0:
            raise SystemExit(result.stderr[-3000:])
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        windows = [r for r in records if "train/words_per_sec" in r]
    return {
        "mode": "single" if stages is None else "pipeline",
        "stages": stages or 0,
        "micro_batches": micro if stages else 1,
        "bubble_fraction": round(bubble_fraction(stages, micro), 3) if stages else 0.0,
        "threads_per_rank": threads,
        "oversubscribed": ranks * threads > cores,
        "words_per_sec": round(windows[-1]["train/words_per_sec"], 1),
        "timed_steps": steps - steps // 2,
        "wall_s": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--steps", type=int, default=60, help="training steps a run (the second half is timed)")
    parser.add_argument("--micro-batches", type=int, default=4)
    parser.add_argument("--stages", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--cores", type=int, default=os.cpu_count())
    parser.add_argument("--output", type=Path)
    args, overrides = parser.parse_known_args()
    config = load_config(args.config, overrides)
    subprocess.run([sys.executable, "-m", "dist_s2s", "prepare", "--config", args.config, *overrides], check=True,
                   cwd=REPO, capture_output=True)  # a no-op when prepared; ranks do not prepare
    runs = [run(args.config, config.data.out_dir, None, args.steps, args.micro_batches, args.cores, overrides)]
    runs += [run(args.config, config.data.out_dir, s, args.steps, args.micro_batches, args.cores, overrides)
             for s in args.stages]
    single = runs[0]["words_per_sec"]
    for entry in runs:
        entry["vs_single"] = round(entry["words_per_sec"] / single, 3)
        print(f"{entry['mode']:>8} stages={entry['stages']} threads/rank={entry['threads_per_rank']} "
              f"bubble={entry['bubble_fraction']:.2f} words/s={entry['words_per_sec']:>9,.0f} "
              f"({entry['vs_single']:.2f}× single){' oversubscribed' if entry['oversubscribed'] else ''}")
    result = {
        "config": args.config, "overrides": overrides, "cores": args.cores, "batch_size": config.train.batch_size,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                 cwd=REPO).stdout.strip(),
        "device": "cpu", "runs": runs,
    }
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
