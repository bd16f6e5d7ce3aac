"""`dist-s2s bench`: every way to run the model, timed on the same real batches in one run.

    dist-s2s bench --config configs/tiny.yaml
    dist-s2s bench --config configs/multi30k-paper.yaml --mode plain single single@1 pipeline:2@1 --output b.json
    dist-s2s bench --config configs/paper.yaml --batches runs/data/multi30k --steps 3 --warmup 1
    dist-s2s bench --config configs/multi30k-paper.yaml --mode single@1 pipeline:2@1/1f1b \
        pipeline:2@1/wavefront+colocated

Modes: `plain` (the obvious PyTorch model, the baseline of every ratio), `single` (dist-s2s's
single-device trainer step), `pipeline:S` (S DeepSpeed stages under torchrun, gloo on CPU, NCCL
on GPU) under `--parallel.schedule`, or `/1f1b`, `/wavefront`, `/wavefront+colocated` for that
mode alone; `side-by-side:N` (N single-device processes at once, each on the same batches, their
words/s summed: what N processes of this machine reach when they never wait for each other, the
ceiling of any N-process scheme here, shared caches, memory bandwidth and clocks included);
`@T` gives each process T threads (default: the cores shared evenly). Each mode runs
in fresh processes, so peak memory is its own. Words are source + target words without padding.
MFU = useful FLOP/s (`flops.py`) ÷ the matrix-product rate of the mode's precision (fp32, TF32 or bf16;
`/bf16` etc. sets it per mode) measured in the same run on the same device (all cores of the CPU; one
GPU × the GPUs used).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from dist_s2s.bench.measure import device_name, matmul_rate
from dist_s2s.config import Config
from dist_s2s.data.manifest import MANIFEST
from dist_s2s.device import pick_device
from dist_s2s.errors import UserError
from dist_s2s.parallel.one_f_one_b import bubble_fraction
from dist_s2s.parallel.placement import placement_name
from dist_s2s.provenance import provenance

REPO = Path(__file__).resolve().parents[2]
log = logging.getLogger(__name__)


SCHEDULES, PLACEMENTS, PRECISIONS = ("1f1b", "wavefront"), ("chain", "colocated"), ("fp32", "tf32", "bf16")
KINDS, MULTI_PROCESS = ("plain", "single", "pipeline", "side-by-side"), ("pipeline", "side-by-side")


@dataclass
class Mode:
    kind: str
    stages: int
    threads: int
    schedule: str | None = None
    """Pipelines: `1f1b` or `wavefront` (None: the config's parallel.schedule)."""
    placement: str | None = None
    """Wavefront: `chain` or `colocated` (None: the config's parallel.placement)."""
    precision: str | None = None
    """`fp32`, `tf32` or `bf16` (None: the config's train.precision)."""

    @classmethod
    def parse(cls, text: str, cores: int) -> Mode:
        """`single`, `plain`, `pipeline:4`, `single@1`, `pipeline:2@1`, then optionally `/` and `+`-joined
        variants: a schedule and placement for a pipeline, a precision for any mode
        (`pipeline:2@1/wavefront+colocated`, `single@2/bf16`, `pipeline:2@1/wavefront+bf16`)."""
        head, _, variant = text.partition("/")
        name, _, threads = head.partition("@")
        kind, _, stages = name.partition(":")
        tokens = variant.split("+") if variant else []
        schedule = next((t for t in tokens if t in SCHEDULES), None)
        placement = next((t for t in tokens if t in PLACEMENTS), None)
        precision = next((t for t in tokens if t in PRECISIONS), None)
        known = len(tokens) == sum(t is not None for t in (schedule, placement, precision))
        if (kind not in KINDS or (kind in MULTI_PROCESS) != bool(stages) or not known
                or ((schedule or placement) and kind != "pipeline") or (placement and schedule != "wavefront")):
            raise UserError(f"unknown bench mode {text!r} (plain, single, pipeline:S, side-by-side:N, each optionally "
                            "@THREADS, "
                            "then /VARIANTS joined by +: 1f1b or wavefront[+chain|+colocated] for a pipeline, "
                            "fp32, tf32 or bf16 for any)")
        count = int(stages) if stages else 0
        return cls(kind, count, int(threads) if threads else max(1, cores // max(1, count)), schedule, placement,
                   precision)

    @property
    def label(self) -> str:
        label = (f"{self.kind}:{self.stages}" if self.kind in MULTI_PROCESS else self.kind) + f"@{self.threads}"
        variants = [v for v in (self.schedule, self.placement, self.precision) if v]
        return label + ("/" + "+".join(variants) if variants else "")

    def overrides(self, config: Config) -> list[str]:
        """What the mode's processes are told beyond the user's overrides."""
        extra = [f"--train.precision={self.precision}"] if self.precision else []
        if self.kind != "pipeline":
            return extra
        schedule = self.schedule or config.parallel.schedule
        extra += [f"--parallel.stages={self.stages}", f"--parallel.schedule={schedule}"]
        if schedule == "wavefront":
            placement = self.placement or config.parallel.placement
            extra += ["--parallel.micro_batches=1", f"--parallel.placement={placement}"]
        return extra


def run_mode(mode: Mode, config_path: str, *, overrides: list[str], batches: str, steps: int, warmup: int,
             config: Config, record_timeline: bool = False) -> list[dict]:
    """Every rank's record (rank 0 first) of `steps` timed steps after `warmup`; with `record_timeline`,
    each pipeline rank's instructions of the last timed step."""
    with tempfile.TemporaryDirectory() as scratch:
        kind = "single" if mode.kind == "side-by-side" else mode.kind
        worker = ["-m", "dist_s2s.bench.worker", "--config", config_path, "--mode", kind, "--batches", batches,
                  "--steps", str(steps), "--warmup", str(warmup), "--out", scratch,
                  *(["--timeline"] if record_timeline else []), *overrides]
        env = {**os.environ, "OMP_NUM_THREADS": str(mode.threads), "TMPDIR": scratch}
        if not torch.cuda.is_available():
            env["DS_ACCELERATOR"] = "cpu"
        processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      env={**env, **own_env}, cwd=REPO)
                     for command, own_env in _commands(mode, worker, config)]
        outputs = [process.communicate()[0] for process in processes]
        for process, output in zip(processes, outputs):
            if process.returncode != 0:
                raise UserError(f"bench mode {mode.label} failed:\n{output[-3000:]}")
        ranks = [json.loads(path.read_text()) for path in sorted(Path(scratch).glob("rank-*.json"),
                                                                  key=lambda p: int(p.stem.split("-")[1]))]
        return [side_by_side(ranks)] + ranks[1:] if mode.kind == "side-by-side" else ranks


def _commands(mode: Mode, worker: list[str], config: Config) -> list[tuple[list[str], dict[str, str]]]:
    """The processes a mode starts, each with what its environment adds."""
    if mode.kind == "pipeline":
        return [([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={mode.stages}",
                  *worker, *mode.overrides(config)], {})]
    if mode.kind == "side-by-side":  # on a GPU machine, process r on GPU r
        return [([sys.executable, *worker, "--rank", str(rank), *mode.overrides(config)],
                 {"CUDA_VISIBLE_DEVICES": str(rank)} if torch.cuda.is_available() else {})
                for rank in range(mode.stages)]
    return [([sys.executable, *worker, *mode.overrides(config)], {})]


def side_by_side(ranks: list[dict]) -> dict:
    """Independent processes timed at once: their words, sentences and FLOPs summed over the slowest one's time
    (what they did together while all of them ran)."""
    return {**ranks[0], "seconds": max(r["seconds"] for r in ranks),
            **{key: sum(r[key] for r in ranks) for key in ("words", "sentences", "flops")}}


def bench(config: Config, config_path: str, *, overrides: list[str], modes: list[str], batches: str | None,
          steps: int, warmup: int, output: str | None) -> dict:
    cores = os.cpu_count() or 1
    device = pick_device(config.train.device)
    batches = batches or config.data.out_dir
    if not (Path(batches) / MANIFEST).is_file():
        raise UserError(f"no prepared data in {batches}: run `dist-s2s prepare` first, or pass --batches DIR")
    torch.set_num_threads(cores)
    limits = {"fp32": matmul_rate(device)}
    runs = []
    parsed = [Mode.parse(text, cores) for text in modes]  # every mode checked before the first runs
    for number, mode in enumerate(parsed, start=1):
        log.info("bench: mode %d of %d: %s (%d warm-up + %d timed steps)", number, len(parsed), mode.label, warmup,
                 steps)
        ranks = run_mode(mode, config_path, overrides=overrides, batches=batches, steps=steps, warmup=warmup,
                         config=config)
        precision = mode.precision or config.train.precision
        if precision not in limits:  # MFU against the matrix-product rate of the precision the mode ran in
            limits[precision] = matmul_rate(device, precision=precision)
        runs.append(_run_record(mode, ranks, config, limit=limits[precision], device=device, cores=cores,
                                steps=steps))
    plain = next((r["words_per_sec"] for r in runs if r["mode"] == "plain"), None)
    for run in runs:
        run["vs_plain"] = round(run["words_per_sec"] / plain, 3) if plain else None
    add_scaling_efficiency(runs)
    result = {
        **provenance(config, config_path=config_path, overrides=overrides), "batches": batches,
        "batch_size": config.train.batch_size,
        "device": device_name(device), "device_type": device.type, "cores": cores,
        "matmul_tflops_per_sec": round(limits["fp32"] / 1e12, 4), "torch": torch.__version__,
        "paper_words_per_sec": {"1_gpu": 1700, "8_gpus": 6300},
        "runs": runs,
    }
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(json.dumps(result, indent=2) + "\n")
    return result


def _run_record(mode: Mode, ranks: list[dict], config: Config, *, limit: float, device: torch.device, cores: int,
                steps: int) -> dict:
    """One mode's figures from its ranks' records (rank 0's timing), MFU against `limit` (FLOP/s)."""
    pipeline = mode.kind == "pipeline"
    schedule = (mode.schedule or config.parallel.schedule) if pipeline else None
    wavefront, micro = schedule == "wavefront", config.parallel.micro_batches
    lead = ranks[0]
    devices = max(1, mode.stages) if device.type == "cuda" else 1  # pipeline stages or side-by-side processes
    flops_per_sec = lead["flops"] / lead["seconds"]
    return {
        "mode": mode.kind, "label": mode.label, "stages": mode.stages if pipeline else 0,
        "processes": max(1, mode.stages), "schedule": schedule,
        "placement": placement_name(mode.placement or config.parallel.placement, config.model.num_layers,
                                    config.model.softmax_shards, mode.stages) if wavefront else None,
        "chunk_steps": config.parallel.chunk_steps if wavefront else None,
        "micro_batches": micro if pipeline and not wavefront else 1,
        "bubble_fraction": (round(bubble_fraction(mode.stages, micro), 3) if pipeline and not wavefront
                            else None if wavefront else 0.0),
        "threads_per_rank": mode.threads, "oversubscribed": device.type == "cpu" and
        max(1, mode.stages) * mode.threads > cores,
        "words_per_sec": round(lead["words"] / lead["seconds"], 1),
        "sentences_per_sec": round(lead["sentences"] / lead["seconds"], 2),
        "tflops_per_sec": round(flops_per_sec / 1e12, 4),
        "precision": mode.precision or config.train.precision, "matmul_tflops_per_sec": round(limit / 1e12, 4),
        "mfu": round(flops_per_sec / (limit * devices), 4),
        "peak_mem_mb": max(r["peak_mem_mb"] for r in ranks),
        "peak_mem_mb_per_rank": [r["peak_mem_mb"] for r in ranks],
        "timed_steps": steps,
    }


def add_scaling_efficiency(runs: list[dict]) -> None:
    """Each pipeline of S stages × T threads against the same run's `single@T` (words/s ÷ S × single) and its
    `side-by-side:S@T` (÷ what S independent processes reached at once), where those modes were run."""
    def words(mode: str, processes: int, threads: int, precision: str) -> float | None:
        return next((r["words_per_sec"] for r in runs if r["mode"] == mode and r["processes"] == processes
                     and r["threads_per_rank"] == threads and r["precision"] == precision), None)

    for run in runs:
        if run["mode"] != "pipeline":
            continue
        single = words("single", 1, run["threads_per_rank"], run["precision"])
        beside = words("side-by-side", run["stages"], run["threads_per_rank"], run["precision"])
        run["scaling_efficiency"] = round(run["words_per_sec"] / (run["stages"] * single), 3) if single else None
        run["vs_side_by_side"] = round(run["words_per_sec"] / beside, 3) if beside else None


def table(result: dict) -> str:
    """The runs as a Markdown table (docs/benchmarks.md's is made from the committed JSON files)."""
    lines = ["| mode | threads/rank | words/s | × plain | sentences/s | TFLOP/s | MFU | peak MB (max rank) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for run in result["runs"]:
        ratio = f"{run['vs_plain']:.2f}×" if run["vs_plain"] else "–"
        flag = " (oversubscribed)" if run["oversubscribed"] else ""
        lines.append(f"| {run['label']}{flag} | {run['threads_per_rank']} | {run['words_per_sec']:,.0f} | {ratio} | "
                     f"{run['sentences_per_sec']:,.1f} | {run['tflops_per_sec']:.3f} | {100 * run['mfu']:.1f}% | "
                     f"{run['peak_mem_mb']:,.0f} |")
    for run in result["runs"]:
        if run.get("scaling_efficiency") or run.get("vs_side_by_side"):
            parts = [f"scaling efficiency {run['scaling_efficiency']:.2f} (÷ {run['stages']} × single@"
                     f"{run['threads_per_rank']})" if run.get("scaling_efficiency") else "",
                     f"{run['vs_side_by_side']:.2f} of side-by-side:{run['stages']}@{run['threads_per_rank']}"
                     if run.get("vs_side_by_side") else ""]
            lines.append(f"{run['label']}: " + ", ".join(p for p in parts if p))
    return "\n".join(lines)
