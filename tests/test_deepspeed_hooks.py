"""The private DeepSpeed names dist-s2s relies on (`parallel/deepspeed_hooks.py`) are there, in the version
they were written against: on another DeepSpeed this fails first, naming what to check."""

from __future__ import annotations

import subprocess
import sys

import deepspeed
from conftest import free_port, launcher_env

from dist_s2s.parallel import deepspeed_hooks


def test_the_installed_deepspeed_is_the_one_the_hooks_were_written_against():
    assert deepspeed.__version__ == deepspeed_hooks.WRITTEN_AGAINST, (
        f"DeepSpeed {deepspeed.__version__} is installed; dist_s2s/parallel/deepspeed_hooks.py was written against "
        f"{deepspeed_hooks.WRITTEN_AGAINST}: read each hook there (PRIVATE_NAMES) against the new source, then raise "
        "WRITTEN_AGAINST and the pin in constraints.txt")


def test_every_private_name_the_hooks_use_exists():
    assert deepspeed_hooks.missing_private_names() == [], (
        "DeepSpeed no longer has these private names that dist_s2s/parallel/deepspeed_hooks.py relies on")


def test_a_rank_joins_its_process_group_without_importing_mlflow_and_can_import_it_after(tmp_path):
    """DeepSpeed's autotuner imports MLflow as DeepSpeed loads (seconds of every rank's start); a rank that
    does not track never needs it. A one-rank group on 127.0.0.1, in a fresh interpreter."""
    script = (
        "import sys\n"
        "from dist_s2s.config import Config\n"
        "from dist_s2s.parallel.process_group import join_process_group\n"
        "join_process_group(Config())\n"
        "print('deepspeed' in sys.modules, 'mlflow' in sys.modules)\n"
        "import mlflow\n"
        "print(mlflow.MlflowClient is not None)\n")
    env = {**launcher_env(tmp_path), "WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port())}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["True", "False", "True"], result.stdout
