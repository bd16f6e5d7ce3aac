"""`dist-s2s prepare` at WMT'14's size: time, pairs/s, peak memory and disk at 1M, 4M and 12M pairs.

    .venv/bin/python benchmarks/synthetic_corpus.py --pairs 12000000 --out runs/synthetic/wmt14_like_12m
    .venv/bin/python benchmarks/prepare_scale.py --corpus runs/synthetic/wmt14_like_12m \
        --pairs 1000000 4000000 12000000 --cpus 2 --output benchmarks/results/prepare-scale.json

Each size prepares the first N lines of the synthetic corpus (`synthetic_corpus.py`; its first N
lines are its N-pair corpus) and the real newstest2012 + 2013 as the valid split, with
`configs/paper-synthetic.yaml`: the paper's data settings (160k / 80k words, max_len 80, 100k-row
shards, 50k-line chunks). Ray is started before the clock; memory is sampled through the run
(`tree_memory.py`: summed RSS and PSS of the driver, raylet, GCS and every worker), disk is the
shards' size and the work directory's peak. The shards of the last size are kept (`--keep`) for the
loader and the paper's model (`loader_scale.py`, `paper_steps.py`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

import ray
from tree_memory import TreeMemory

from dist_s2s.config import load_config
from dist_s2s.data.prepare import WORK, prepare

CONFIG = "configs/paper-synthetic.yaml"


def prefix_corpus(corpus: Path, pairs: int, root: Path, real_data: Path) -> Path:
    """`root/wmt14_like/train.{en,fr}`: the first `pairs` lines of the corpus, streamed (reused when complete);
    beside it a link to the real newstest2012 + 2013 (`wmt14_dev`), the paper's validation set."""
    target = root / "wmt14_like"
    target.mkdir(parents=True, exist_ok=True)
    if not (root / "wmt14_dev").exists():
        (root / "wmt14_dev").symlink_to((real_data / "wmt14_dev").resolve(), target_is_directory=True)
    for lang in ("en", "fr"):
        final = target / f"train.{lang}"
        if final.is_file() and (target / f".lines.{lang}").read_text() == str(pairs):
            continue
        partial = target / f"train.{lang}.partial"
        written = 0
        with open(corpus / f"train.{lang}", "rb") as source, open(partial, "wb") as out:
            for line in source:
                if written == pairs:
                    break
                out.write(line)
                written += 1
        if written < pairs:
            raise SystemExit(f"prepare_scale: {corpus / f'train.{lang}'} has {written} lines, fewer than {pairs}")
        partial.replace(final)
        (target / f".lines.{lang}").write_text(str(pairs))
    return root


class DirectoryPeak:
    """Peak bytes under a directory, sampled every few seconds (prepare deletes its work directory at the end)."""

    def __init__(self, path: Path, interval: float = 2.0):
        self.path, self.interval, self.peak = path, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, directory_bytes(self.path))

    def __enter__(self) -> DirectoryPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def directory_bytes(path: Path) -> int:
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(folder, name)).st_size
            except OSError:
                pass  # written atomically: a temporary file renamed between listing and stat
    return total


class VocabLine(logging.Handler):
    """Catches prepare's vocabulary log line: the distinct word types a side."""

    def __init__(self):
        super().__init__()
        self.types: dict[str, int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        pattern = r"prepare: vocab (\w+) (\d+) of (\d+) distinct words, (\w+) (\d+) of (\d+)"
        match = re.match(pattern, record.getMessage())
        if match:
            self.types = {match[1]: int(match[3]), match[4]: int(match[6])}


def measure(corpus: Path, pairs: int, cpus: int, *, work_root: Path, real_data: Path, keep: bool) -> dict:
    root = prefix_corpus(corpus, pairs, work_root / f"corpus-{pairs}", real_data)
    out_dir = work_root / f"prepared-{pairs}"
    config = load_config(CONFIG, [f"--data.root={root}", f"--data.out_dir={out_dir}", f"--ray.num_cpus={cpus}"])
    vocab_line = VocabLine()
    prepare_log = logging.getLogger("dist_s2s.data.prepare")
    prepare_log.setLevel(logging.INFO)
    prepare_log.addHandler(vocab_line)
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, logging_level="WARNING",
             object_store_memory=256 * 1024**2)
    try:
        time.sleep(2)
        with TreeMemory() as idle:  # Ray's daemons and idle workers before any work
            time.sleep(2)
        with TreeMemory() as memory, DirectoryPeak(out_dir / WORK) as work_dir:
            started = time.perf_counter()
            manifest = prepare(config)
            elapsed = time.perf_counter() - started
    finally:
        ray.shutdown()
        prepare_log.removeHandler(vocab_line)
    shards_bytes = directory_bytes(out_dir / "shards")
    if not keep:
        subprocess.run(["rm", "-rf", str(out_dir)], check=True)
    train = manifest.splits["train"]
    return {
        "pairs": pairs, "ray_cpus": cpus, "seconds": round(elapsed, 1), "pairs_per_sec": round(pairs / elapsed),
        **memory.summary(), "ray_idle": idle.summary(),
        "disk_shards_mb": round(shards_bytes / 2**20), "disk_work_peak_mb": round(work_dir.peak / 2**20),
        "input_mb": round(sum((root / "wmt14_like" / f"train.{lang}").stat().st_size for lang in ("en", "fr"))
                          / 2**20),
        "rows_kept": train["rows"], "filtered": manifest.filtered["train"], "word_types": vocab_line.types,
        "shards": len(manifest.shards), "out_dir": str(out_dir) if keep else None,
        "resolved_config": {"data": asdict(config.data), "ray": asdict(config.ray)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", required=True, help="a synthetic_corpus.py output (train.en, train.fr)")
    parser.add_argument("--pairs", type=int, nargs="+", default=[1_000_000, 4_000_000, 12_000_000])
    parser.add_argument("--cpus", type=int, nargs="+", default=[2])
    parser.add_argument("--work", default="runs/synthetic", help="where the prefixes and prepared data go")
    parser.add_argument("--real-data", default="../shared/data", help="the real corpora (for wmt14_dev)")
    parser.add_argument("--keep", action="store_true", help="keep the largest size's shards")
    parser.add_argument("--output", help="append the runs to this JSON file")
    args = parser.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    runs = []
    for cpus in args.cpus:
        for pairs in args.pairs:
            run = measure(Path(args.corpus), pairs, cpus, work_root=Path(args.work), real_data=Path(args.real_data),
                          keep=args.keep and pairs == max(args.pairs) and cpus == args.cpus[-1])
            run.update(commit=commit, date=time.strftime("%Y-%m-%d"),
                       host={"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                             "python": sys.version.split()[0]})
            runs.append(run)
            print(f"{pairs:>10,} pairs, {cpus} Ray CPUs: {run['seconds']:>7.1f} s = {run['pairs_per_sec']:>5} pairs/s, "
                  f"peak PSS {run['peak_pss_mb']} MB (RSS {run['peak_rss_mb']} MB; by role {run['role_peak_pss_mb']}), "
                  f"shards {run['disk_shards_mb']} MB, work dir peak {run['disk_work_peak_mb']} MB, "
                  f"types {run['word_types']}", flush=True)
            if args.output:
                path = Path(args.output)
                existing = json.loads(path.read_text()) if path.is_file() else {"runs": []}
                existing["runs"].append(run)
                path.write_text(json.dumps(existing, indent=2) + "\n")


if __name__ == "__main__":
    main()
