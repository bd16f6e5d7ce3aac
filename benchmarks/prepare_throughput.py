"""Pairs/s and peak memory of `dist-s2s prepare` with 1 and 2 Ray CPUs.

    .venv/bin/python benchmarks/prepare_throughput.py --config configs/multi30k-paper.yaml --cpus 1 2
    .venv/bin/python benchmarks/prepare_throughput.py --config configs/tatoeba.yaml --cpus 1 2 \
        --output benchmarks/results/prepare.json

Ray is started before the clock (its start-up is reported apart); memory is the peak summed
RSS of the driver and every process under it (raylet, workers), sampled every 0.1 s, next to
the same sum for Ray sitting idle before the work starts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import ray

from dist_s2s.config import load_config
from dist_s2s.data.prepare import prepare


class TreeMemory:
    """Peak RSS of this process and all its descendants, sampled in a thread."""

    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self):
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for process in [me, *me.children(recursive=True)]:
                try:
                    total += process.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(0.1)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def measure(config_path: str, cpus: int, overrides: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as out_dir:
        config = load_config(config_path, [f"--data.out_dir={out_dir}", *overrides])
        started = time.perf_counter()
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, logging_level="WARNING",
                 object_store_memory=256 * 1024**2)
        startup = time.perf_counter() - started
        try:
            time.sleep(2)
            with TreeMemory() as idle:  # Ray's own daemons and idle workers, before any work
                time.sleep(1)
            with TreeMemory() as memory:
                started = time.perf_counter()
                manifest = prepare(config)
                elapsed = time.perf_counter() - started
        finally:
            ray.shutdown()
    pairs = sum(split["rows_in"] for split in manifest.splits.values())
    return {"config": config_path, "ray_cpus": cpus, "pairs": pairs, "seconds": round(elapsed, 2),
            "pairs_per_sec": round(pairs / elapsed), "ray_startup_seconds": round(startup, 2),
            "peak_rss_mb": round(memory.peak / 2**20), "ray_idle_rss_mb": round(idle.peak / 2**20)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--cpus", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--output", help="append the runs to this JSON file")
    args, overrides = parser.parse_known_args()
    runs = [measure(args.config, cpus, overrides) for cpus in args.cpus]
    for run in runs:
        print(f"{run['config']:<24} {run['ray_cpus']} Ray CPUs: {run['pairs']:>7} pairs in {run['seconds']:>6.1f} s "
              f"= {run['pairs_per_sec']:>6} pairs/s, peak RSS {run['peak_rss_mb']} MB "
              f"(Ray idle {run['ray_idle_rss_mb']} MB, start {run['ray_startup_seconds']} s)")
    if len(runs) > 1:
        print(f"speed-up {runs[-1]['ray_cpus']} vs {runs[0]['ray_cpus']} CPUs: "
              f"{runs[-1]['pairs_per_sec'] / runs[0]['pairs_per_sec']:.2f}x")
    if args.output:
        path = Path(args.output)
        existing = json.loads(path.read_text()) if path.is_file() else {"runs": []}
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        host = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                "python": sys.version.split()[0]}
        existing["runs"] += [{**run, "commit": commit, "date": time.strftime("%Y-%m-%d"), "host": host} for run in runs]
        path.write_text(json.dumps(existing, indent=2) + "\n")


if __name__ == "__main__":
    main()
