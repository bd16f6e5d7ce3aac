"""The training loader on 12M pairs: opening, planning an epoch, the first batch, and a cursor resumed deep in
epoch 3, each timed with the process's memory; the resumed batches equal those of a loader never interrupted.

    .venv/bin/python benchmarks/prepare_scale.py ... --pairs 12000000 --keep     # the shards
    .venv/bin/python benchmarks/loader_scale.py --data runs/synthetic/prepared-12000000 \
        --output benchmarks/results/loader-scale.json

The loader that is never interrupted walks every batch of epochs 1 and 2 and into epoch 3 (reading each,
as training would); the resumed one is a new loader given the cursor `(epoch 2, batch k)` that a
checkpoint at that point holds. Memory is this process's resident size (shard pages it has touched
count; they are the page cache's, shared and dropped under pressure) and its unique set size.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import psutil

from dist_s2s.data.loader import BatchLoader

SEED = 1
BATCH = 128


def memory() -> dict:
    info = psutil.Process().memory_full_info()
    return {"rss_mb": round(info.rss / 2**20), "uss_mb": round(info.uss / 2**20)}


def timed(label: str, results: dict, action):
    started = time.perf_counter()
    value = action()
    results[label] = {"seconds": round(time.perf_counter() - started, 3), **memory()}
    print(f"{label:<28} {results[label]['seconds']:>8.3f} s   RSS {results[label]['rss_mb']:>6} MB   "
          f"USS {results[label]['uss_mb']:>6} MB", flush=True)
    return value


def same_batch(a, b) -> bool:
    return all(np.array_equal(getattr(a, name).numpy(), getattr(b, name).numpy())
               for name in ("src", "tgt_in", "tgt_out", "src_lengths", "tgt_lengths", "lines"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a prepared data.out_dir")
    parser.add_argument("--resume-at", type=float, default=0.6, help="how far into epoch 3 the cursor is")
    parser.add_argument("--compare", type=int, default=8, help="batches compared after the cursor")
    parser.add_argument("--output")
    args = parser.parse_args()
    results: dict = {"start": memory()}

    loader = timed("open", results, lambda: BatchLoader(args.data, "train", BATCH, seed=SEED))
    per_epoch = timed("plan epoch 1", results, loader.batches_per_epoch)
    first = iter(loader)
    timed("first batch", results, lambda: next(first))
    cursor = {**loader.state_dict(), "epoch": 2, "next_batch": int(args.resume_at * per_epoch)}

    resumed = timed("open (resumed loader)", results, lambda: BatchLoader(args.data, "train", BATCH, seed=SEED))
    resumed.load_state_dict(cursor)
    resumed_batches = iter(resumed)
    timed("first batch after resume", results, lambda: next(resumed_batches))
    after_resume = [next(resumed_batches) for _ in range(args.compare - 1)]

    straight = BatchLoader(args.data, "train", BATCH, seed=SEED)
    started = time.perf_counter()
    batches = iter(straight)
    walked = 0
    while (straight.epoch, straight.next_batch) != (2, cursor["next_batch"]):
        if next(batches, None) is None:  # an epoch ended: iterating again starts the next, as training does
            batches = iter(straight)
            continue
        walked += 1
    results["walk to the cursor"] = {"seconds": round(time.perf_counter() - started, 1), "batches": walked,
                                     **memory()}
    print(f"walked {walked:,} batches to the cursor in {results['walk to the cursor']['seconds']} s", flush=True)
    resumed_first = BatchLoader(args.data, "train", BATCH, seed=SEED)
    resumed_first.load_state_dict(cursor)
    expected = [next(batches) for _ in range(args.compare)]
    got = [next(iter(resumed_first))] + after_resume
    equal = all(same_batch(a, b) for a, b in zip(expected, got))
    print(f"{args.compare} batches after the cursor equal a loader never interrupted: {equal}")

    record = {"data": args.data, "rows": loader.num_rows, "batches_per_epoch": per_epoch, "cursor": cursor,
              "steps": results, "resumed_equals_uninterrupted": equal, "compared_batches": args.compare,
              "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                       text=True).stdout.strip(),
              "date": time.strftime("%Y-%m-%d"), "cores": os.cpu_count()}
    if args.output:
        path = Path(args.output)
        existing = json.loads(path.read_text()) if path.is_file() else {"runs": []}
        existing["runs"].append(record)
        path.write_text(json.dumps(existing, indent=2) + "\n")
    if not equal:
        raise SystemExit("loader_scale: the resumed batches differ from the uninterrupted loader's")


if __name__ == "__main__":
    main()
