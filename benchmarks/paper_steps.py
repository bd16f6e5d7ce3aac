"""The paper's model (384M parameters) for 20 steps from the 12M-pair shards: on one device, and as the paper's
8-stage layout under `deepspeed --num_gpus 8` (gloo on CPU); peak memory of every rank, and how far the
pipeline is from the single device at the last step.

    .venv/bin/python benchmarks/paper_steps.py --data runs/synthetic/prepared-12000000 \
        --output benchmarks/results/paper-steps-12m.json

Both runs are `dist-s2s train` with configs/paper-synthetic.yaml (configs/paper.yaml's sizes and recipe: 4 × 1000
LSTMs, 160k / 80k words, SGD 0.7, batches of 128, the wavefront in the chain layout) on the same batches, each
ending with a checkpoint and a validation (newstest2012 + 2013). Memory is each process's peak RSS and PSS, sampled
every half second. `--stages 8 4 2` tries each layout in turn until one runs: a layout the machine cannot hold
(a rank killed for memory) is recorded with the memory its ranks had reached, and the next one is tried.
`--reuse-single` keeps a finished one-device run of an earlier call (it takes 20 minutes at this size).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import torch

from dist_s2s.train.checkpoint import CheckpointDir, load_checkpoint, model_weights

CONFIG = "configs/paper-synthetic.yaml"


class RankMemory:
    """Peak RSS and PSS of every `dist_s2s train` process under this one, keyed by its RANK (0 alone)."""

    def __init__(self):
        self.rss: dict[int, int] = {}
        self.pss: dict[int, int] = {}
        self.machine_low_mb = psutil.virtual_memory().available / 2**20
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.wait(0.5):
            for process in me.children(recursive=True):
                try:
                    if "dist_s2s" not in " ".join(process.cmdline()) or "deepspeed.launcher" in " ".join(
                            process.cmdline()):
                        continue
                    rank = int(process.environ().get("RANK", 0))
                    info = process.memory_full_info()
                except (psutil.Error, ValueError):
                    continue
                self.rss[rank] = max(self.rss.get(rank, 0), info.rss)
                self.pss[rank] = max(self.pss.get(rank, 0), info.pss)
            self.machine_low_mb = min(self.machine_low_mb, psutil.virtual_memory().available / 2**20)

    def __enter__(self) -> RankMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run(label: str, command: list[str], env: dict[str, str], log_path: Path) -> dict:
    """The command's time and memory; `exit` set when it failed, `killed_for_memory` when the kernel's OOM
    killer ended one of its processes meanwhile."""
    print(f"{label}: {' '.join(command)}", flush=True)
    kills_before = oom_kills()
    started = time.perf_counter()
    with RankMemory() as memory, open(log_path, "w") as log:
        result = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    seconds = time.perf_counter() - started
    mb = lambda peaks: {rank: round(value / 2**20) for rank, value in sorted(peaks.items())}  # noqa: E731
    record = {"seconds": round(seconds, 1), "peak_rss_mb_per_rank": mb(memory.rss),
              "peak_pss_mb_per_rank": mb(memory.pss), "peak_pss_mb_sum": round(sum(memory.pss.values()) / 2**20),
              "peak_rss_mb_sum": round(sum(memory.rss.values()) / 2**20),
              "machine_available_low_mb": round(memory.machine_low_mb)}
    if result.returncode != 0:
        record.update(exit=result.returncode, killed_for_memory=oom_kills() > kills_before, log=str(log_path))
    print(f"{label}: {record}", flush=True)
    return record


def oom_kills() -> int:
    """Processes the kernel has killed for memory since boot (/proc/vmstat's oom_kill)."""
    for line in Path("/proc/vmstat").read_text().splitlines():
        if line.startswith("oom_kill "):
            return int(line.split()[1])
    return 0


def losses(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="the prepared 12M-pair data.out_dir")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--stages", type=int, nargs="+", default=[8, 4, 2],
                        help="layouts to try in turn until one fits the machine's memory")
    parser.add_argument("--work", default="runs/paper-steps")
    parser.add_argument("--reuse-single", action="store_true",
                        help="keep the one-device run an earlier call left in --work")
    parser.add_argument("--output")
    args = parser.parse_args()
    work = Path(args.work).resolve()
    single_record = work / "single.json"
    if not (args.reuse_single and single_record.is_file()):
        subprocess.run(["rm", "-rf", str(work)], check=True)
    work.mkdir(parents=True, exist_ok=True)
    common = [f"--data.out_dir={Path(args.data).resolve()}", f"--train.max_steps={args.steps}", "--train.log_every=1",
              f"--train.valid_every={args.steps}", f"--train.checkpoint_every={args.steps}", "--train.device=cpu"]
    env = {**os.environ, "DS_ACCELERATOR": "cpu"}
    single_dir = work / "single"
    if single_record.is_file():
        single = json.loads(single_record.read_text())
        print(f"one device: kept from {single_dir}", flush=True)
    else:
        single = run("one device", [sys.executable, "-m", "dist_s2s", "train", "--config", CONFIG, *common,
                                    "--parallel.stages=1", f"--train.run_dir={single_dir}"],
                     {**env, "OMP_NUM_THREADS": str(os.cpu_count())}, work / "single.log")
        if "exit" in single:
            raise SystemExit(f"paper_steps: one device failed (exit {single['exit']}); see {single['log']}")
        single_record.write_text(json.dumps(single) + "\n")
    did_not_fit = []
    for stages in args.stages:
        pipeline_dir = work / f"pipeline-{stages}"
        subprocess.run(["rm", "-rf", str(pipeline_dir)], check=True)
        pipeline = run(f"{stages} stages", [
            sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(stages), "--master_port",
            str(free_port()), "--module", "dist_s2s", "train", "--config", CONFIG, *common,
            f"--parallel.stages={stages}", f"--train.run_dir={pipeline_dir}"],
            {**env, "OMP_NUM_THREADS": "1"}, work / f"pipeline-{stages}.log")
        if "exit" not in pipeline:
            break
        if not pipeline["killed_for_memory"]:
            raise SystemExit(f"paper_steps: {stages} stages failed (exit {pipeline['exit']}); see {pipeline['log']}")
        did_not_fit.append({"stages": stages, **pipeline})
    else:
        raise SystemExit(f"paper_steps: no layout of {args.stages} fits this machine's memory")

    checkpoints = {name: CheckpointDir(directory / "checkpoints", 3).path_of(args.steps)
                   for name, directory in (("single", single_dir), ("pipeline", pipeline_dir))}
    weights = {name: model_weights(path, load_checkpoint(path)) for name, path in checkpoints.items()}
    assert weights["single"].keys() == weights["pipeline"].keys()
    largest = max(float((weights["single"][k] - weights["pipeline"][k]).abs().max()) for k in weights["single"])
    parameters = sum(tensor.numel() for tensor in weights["single"].values())
    per_step, valid = [], {}
    for a, b in zip(losses(single_dir), losses(pipeline_dir)):
        if "train/loss" in a:
            per_step.append({"step": a["step"], "loss_single": a["train/loss"], "loss_pipeline": b["train/loss"],
                             "grad_norm_single": a["train/grad_norm"], "grad_norm_pipeline": b["train/grad_norm"],
                             "relative": abs(a["train/loss"] - b["train/loss"]) / abs(a["train/loss"])})
        if "valid/ppl" in a:
            valid = {"single": a["valid/ppl"], "pipeline": b["valid/ppl"]}
    record = {
        "config": CONFIG, "data": args.data, "steps": args.steps, "stages": stages, "parameters": parameters,
        "one_device": single, "pipeline": pipeline, "did_not_fit": did_not_fit,
        "largest_weight_difference_at_last_step": largest,
        "largest_relative_loss_difference": max(step["relative"] for step in per_step) if per_step else None,
        "valid_ppl": valid, "per_step": per_step,
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                 text=True).stdout.strip(),
        "date": time.strftime("%Y-%m-%d"), "cores": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total
                                                                                       / 2**30, 1),
        "torch": torch.__version__,
    }
    print(json.dumps({k: v for k, v in record.items() if k != "per_step"}, indent=2))
    if args.output:
        path = Path(args.output)
        existing = json.loads(path.read_text()) if path.is_file() else {"runs": []}
        existing["runs"].append(record)
        path.write_text(json.dumps(existing, indent=2) + "\n")


if __name__ == "__main__":
    main()
