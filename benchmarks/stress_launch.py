"""Launch and exit under stress: N launches of every pipeline layout the trainer runs, on the tiny config.

    .venv/bin/python benchmarks/stress_launch.py --launches 20                     # every layout, one at a time
    .venv/bin/python benchmarks/stress_launch.py --launches 40 --jobs 2 --layouts wavefront-4
    .venv/bin/python benchmarks/stress_launch.py --launches 3 --layouts wavefront-4 --output -   # .ci/run's

A launch is `torchrun --standalone` of `dist-s2s train` for a few steps, each rank's output kept apart
(torchrun's --log-dir / --redirects). It failed if torchrun's exit status is not 0, or a rank's output holds a
sign of an unclean exit (a signal, `terminate called`, a traceback): a rank that aborts at the end of a finished
run makes the launcher report a failed job (and `--max-restarts` start it again), though every step ran. The
exit probe (benchmarks/exit_probe) is loaded into every rank and counts the ranks whose interpreter finalized
with gloo threads alive: the exit that now and then aborts, seen at every launch, not once in a hundred.
`--jobs 2` runs two launches side by side, the machine loaded by the other. Failures are reported with the
first lines of the failing rank's output (and, where a rank left a core file and gdb is there, its native
stack); the exit status is 1 if any launch failed, or with `--strict` if any rank finalized over gloo threads.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "tiny.yaml"

LAYOUTS: dict[str, tuple[int, tuple[str, ...]]] = {
    "wavefront-2": (2, ("--parallel.stages=2",)),  # 2 layers + 2 shards on 2 stages: co-located
    "wavefront-2-chain": (2, ("--parallel.stages=2", "--parallel.placement=chain")),
    "wavefront-4": (4, ("--parallel.stages=4",)),  # the layout that aborted (issue 31): the chain of 4
    "wavefront-2x2": (4, ("--parallel.stages=2", "--parallel.data=2")),
    "wavefront-8": (8, ("--parallel.stages=8", "--model.num_layers=4", "--model.softmax_shards=4")),
    "1f1b-2": (2, ("--parallel.stages=2", "--parallel.schedule=1f1b", "--parallel.micro_batches=2")),
    "1f1b-4": (4, ("--parallel.stages=4", "--parallel.schedule=1f1b", "--parallel.micro_batches=4")),
}
"""Layout name → (processes, overrides of configs/tiny.yaml)."""

UNCLEAN = re.compile(r"terminate called|Signal \d+|SIG[A-Z]+ received|Aborted|Segmentation fault|Traceback|"
                     r"Fatal Python error|core dumped", re.IGNORECASE)
"""What a rank's or the launcher's output holds after an exit that was not clean."""


@dataclass
class Launch:
    layout: str
    index: int
    returncode: int
    seconds: float
    failing_output: list[str] = field(default_factory=list)
    """The first lines of the failing rank's output (or the launcher's), empty if the launch was clean."""
    finalized_over_threads: int = 0
    """Ranks whose interpreter finalized with gloo threads alive (the exit probe): exits that may abort."""

    @property
    def failed(self) -> bool:
        return bool(self.failing_output)


def prepare_data(work: Path, env: dict[str, str]) -> Path:
    """The tiny config's shards, prepared once for every launch."""
    out_dir = work / "data"
    if not (out_dir / "manifest.json").is_file():
        subprocess.run([sys.executable, "-m", "dist_s2s", "prepare", "--config", str(CONFIG),
                        f"--data.out_dir={out_dir}"], check=True, env=env, cwd=REPO, capture_output=True)
    return out_dir


def launch(layout: str, index: int, *, work: Path, data: Path, steps: int, env: dict[str, str]) -> Launch:
    processes, overrides = LAYOUTS[layout]
    run = work / f"{layout}-{index}"
    shutil.rmtree(run, ignore_errors=True)
    logs = run / "logs"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               f"--log-dir={logs}", "--redirects=3", "-m", "dist_s2s", "train", "--config", str(CONFIG),
               *overrides, f"--data.out_dir={data}", f"--train.run_dir={run / 'run'}",
               f"--train.max_steps={steps}", "--train.log_every=100"]
    seen = run / "exit-probe"
    seen.mkdir(parents=True)
    env = {**env, "EXIT_PROBE": str(seen)}
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=run, timeout=600,
                            preexec_fn=_with_core_files)
    seconds = time.perf_counter() - started
    failing = failing_output(result, logs)
    at_risk = sum(bool(re.search(r"interpreter finalized: [1-9]", path.read_text())) for path in seen.iterdir())
    if failing:
        failing += native_stack(run)
    else:
        shutil.rmtree(run, ignore_errors=True)
    return Launch(layout, index, result.returncode, round(seconds, 2), failing, at_risk)


def _with_core_files() -> None:
    """A rank that aborts leaves a core file in its working directory (the launch's own), for its native stack."""
    resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))


def native_stack(run: Path, lines: int = 40) -> list[str]:
    """The aborting thread's native stack from a core file the launch left, read by gdb (where both exist)."""
    cores = sorted(run.glob("core*"))
    if not cores or shutil.which("gdb") is None:
        return []
    trace = subprocess.run(["gdb", "-batch", "-ex", "bt", sys.executable, str(cores[0])],
                           capture_output=True, text=True, timeout=300)
    frames = [line for line in trace.stdout.splitlines() if line.startswith("#")]
    return [f"native stack of {cores[0].name} (gdb bt):", *frames[:lines]]


def failing_output(result: subprocess.CompletedProcess, logs: Path, lines: int = 12) -> list[str]:
    """The first lines of the first rank's output that shows an unclean exit; else of the launcher's if it failed."""
    for path in sorted(logs.rglob("*.log")):
        text = path.read_text(errors="replace")
        match = UNCLEAN.search(text)
        if match:
            start = text.rfind("\n", 0, match.start()) + 1
            return [f"{path.relative_to(logs)}:", *text[start:].splitlines()[:lines]]
    launcher = result.stdout + result.stderr
    if result.returncode != 0 or UNCLEAN.search(launcher):
        match = UNCLEAN.search(launcher)
        start = launcher.rfind("\n", 0, match.start()) + 1 if match else 0
        return [f"torchrun (exit {result.returncode}):", *launcher[start:].splitlines()[:lines]]
    return []


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--launches", type=int, default=10, help="launches of each layout")
    parser.add_argument("--layouts", nargs="+", choices=sorted(LAYOUTS), default=list(LAYOUTS))
    parser.add_argument("--jobs", type=int, default=1, help="launches running side by side")
    parser.add_argument("--steps", type=int, default=20, help="training steps of each launch")
    parser.add_argument("--work", type=Path, default=None, help="kept between calls (prepared data); else temporary")
    parser.add_argument("--data", type=Path, default=None, help="the tiny config's prepared shards (else prepared)")
    parser.add_argument("--strict", action="store_true", help="a rank finalized over gloo threads fails too")
    parser.add_argument("--output", default="benchmarks/results/stress-launch.json",
                        help="JSON report to write ('-': none)")
    args = parser.parse_args()

    probe = REPO / "benchmarks" / "exit_probe"  # how each rank's process ended
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(probe), str(REPO)]), "DS_ACCELERATOR": "cpu",
           "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1", "TORCH_SHOW_CPP_STACKTRACES": "1",
           "MLFLOW_TRACKING_URI": ""}
    work = args.work or Path(tempfile.mkdtemp(prefix="stress-launch-"))
    work.mkdir(parents=True, exist_ok=True)
    data = args.data or prepare_data(work, env)
    plan = [(layout, index) for index in range(args.launches) for layout in args.layouts]
    started = time.perf_counter()
    launches: list[Launch] = []
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for done in pool.map(lambda item: launch(*item, work=work, data=data, steps=args.steps, env=env), plan):
            launches.append(done)
            print(describe(done), flush=True)
            for line in done.failing_output:
                print(f"    {line}", flush=True)
    report = summarize(launches, args, time.perf_counter() - started)
    for layout, row in report["layouts"].items():
        print(f"{layout}: {row['failed']} of {row['launches']} failed, {row['finalized_over_threads']} finalized over "
              f"gloo threads ({row['seconds_each']:.1f} s a launch)")
    print(f"stress: {report['failed']} of {report['launches']} launches failed, {report['finalized_over_threads']} "
          f"finalized over gloo threads, in {report['wall_s']:.0f} s")
    if args.output != "-":
        Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if report["failed"] or (args.strict and report["finalized_over_threads"]) else 0


def describe(done: Launch) -> str:
    risk = f", {done.finalized_over_threads} ranks finalized over gloo threads" if done.finalized_over_threads else ""
    mark = "FAILED" if done.failed else "ok"
    return f"{done.layout} #{done.index}: {mark} ({done.seconds:.1f} s, exit {done.returncode}{risk})"


def summarize(launches: list[Launch], args, wall_s: float) -> dict:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO)
    layouts = {}
    for layout in args.layouts:
        mine = [launch for launch in launches if launch.layout == layout]
        layouts[layout] = {"processes": LAYOUTS[layout][0], "overrides": list(LAYOUTS[layout][1]),
                           "launches": len(mine), "failed": sum(launch.failed for launch in mine),
                           "finalized_over_threads": sum(bool(launch.finalized_over_threads) for launch in mine),
                           "seconds_each": sum(launch.seconds for launch in mine) / max(1, len(mine))}
    return {"commit": commit.stdout.strip(), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
            "steps": args.steps, "jobs": args.jobs, "launches": len(launches),
            "failed": sum(launch.failed for launch in launches),
            "finalized_over_threads": sum(bool(launch.finalized_over_threads) for launch in launches),
            "wall_s": round(wall_s, 1), "layouts": layouts,
            "failures": [{"layout": launch.layout, "index": launch.index, "exit": launch.returncode,
                          "output": launch.failing_output} for launch in launches if launch.failed]}


if __name__ == "__main__":
    sys.exit(main())
