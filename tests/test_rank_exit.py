"""How a launched rank ends (issue 31): never with its communication threads left to the interpreter's exit.

gloo's threads stop only when their group's last Python reference dies, and DeepSpeed's engine holds the groups
to the end; an exit that finalizes the interpreter tears them down in an order of its own on each rank while the
peers close their sockets, and now and then a rank aborts (SIGABRT) after a finished run. A probe loaded into
every rank (benchmarks/exit_probe) writes what it sees when the exit handlers run and, if the interpreter
finalizes, then too. `benchmarks/stress_launch.py` launches the layouts many times over (docs/robustness.md has
its figures).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, SHARED_DATA, launcher_env

pytestmark = pytest.mark.launcher

PROBE = REPO / "benchmarks" / "exit_probe"
"""Its `sitecustomize.py`, loaded into every rank, says how the rank ended."""


def launch(prepared, tmp_path: Path, *overrides: str) -> tuple[subprocess.CompletedProcess, dict[str, str]]:
    """`dist-s2s train` as 2 pipeline ranks under torchrun with the probe loaded; (result, rank → what it saw)."""
    seen = tmp_path / "seen"
    seen.mkdir(parents=True)
    env = {**launcher_env(tmp_path), "EXIT_PROBE": str(seen), "PYTHONPATH": os.pathsep.join([str(PROBE), str(REPO)])}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "dist_s2s",
               "train", "--config", str(REPO / "configs" / "tiny.yaml"), "--parallel.stages=2",
               f"--data.root={SHARED_DATA}", f"--data.out_dir={prepared.data.out_dir}",
               f"--train.run_dir={tmp_path / 'run'}", "--train.max_steps=2", *overrides]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    return result, {path.name: path.read_text() for path in sorted(seen.iterdir())}


@pytest.mark.parametrize("ending", ["finished", "user error"])
def test_a_launched_rank_ends_without_finalizing_the_interpreter_over_live_gloo_threads(prepared_tiny, tmp_path,
                                                                                         ending):
    # The user error: data never prepared, which every rank finds after joining its groups (a pipeline rank does
    # not prepare), so each leaves from its set-up.
    overrides = () if ending == "finished" else (f"--data.out_dir={tmp_path / 'never-prepared'}",)
    result, seen = launch(prepared_tiny, tmp_path, *overrides)
    assert (result.returncode == 0) == (ending == "finished"), result.stderr[-2000:]
    if ending == "user error":
        assert result.stderr.count("holds no data prepared") == 2, result.stderr[-2000:]  # each rank, one line
    assert sorted(seen) == ["rank-0", "rank-1"], "the probe ran in both ranks"
    for rank, lines in seen.items():
        assert "exit handlers ran" in lines, f"{rank}: {lines}"  # the communication log and MLflow rely on them
        assert not re.search(r"interpreter finalized: [1-9]", lines), f"{rank} finalized over gloo threads: {lines}"


def test_a_few_launches_of_the_layout_that_aborted_end_cleanly(prepared_tiny, tmp_path):
    """The short version of the stress check (`benchmarks/stress_launch.py`): the 4-stage wavefront chain."""
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "stress_launch.py"), "--launches=3",
                             "--layouts", "wavefront-4", "--steps=5", "--strict", f"--work={tmp_path}",
                             f"--data={prepared_tiny.data.out_dir}", "--output=-"],
                            capture_output=True, text=True, timeout=600, env=launcher_env(tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "stress: 0 of 3 launches failed, 0 finalized over gloo threads" in result.stdout
