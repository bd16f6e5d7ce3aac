"""The command line: one shape for every command, help that lists options, one-line errors."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import REPO, SHARED_DATA

from dist_s2s.cli import split_overrides


def run(*args: str, executable=(sys.executable, "-m", "dist_s2s")) -> subprocess.CompletedProcess:
    return subprocess.run([*executable, *args], capture_output=True, text=True, cwd=REPO, timeout=120)


def test_python_dash_m_and_the_console_script_are_the_same_cli():
    module = run("--help")
    script = run("--help", executable=(str(REPO / ".venv" / "bin" / "dist-s2s"),))
    assert module.returncode == script.returncode == 0
    assert "prepare" in module.stdout and "download" in module.stdout
    assert module.stdout.replace("__main__.py", "dist-s2s") == script.stdout


def test_command_help_lists_every_config_key():
    result = run("prepare", "--help")
    assert result.returncode == 0
    for key in ("--config", "--data.root", "--data.out_dir", "--train.run_dir", "--data.reverse_source",
                "--ray.address", "--tracking.uri", "--parallel.stages"):
        assert key in result.stdout


def test_overrides_accept_equals_or_a_separate_value():
    options, overrides = split_overrides(["--config", "c.yaml", "--train.max_steps", "5", "--data.root=/x"])
    assert options == ["--config", "c.yaml"]
    assert overrides == ["--train.max_steps=5", "--data.root=/x"]


def test_a_missing_input_is_one_line_naming_the_file(tmp_path):
    result = run("prepare", "--config", "configs/tiny.yaml", f"--data.root={tmp_path}", f"--data.out_dir={tmp_path}/o")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("dist-s2s: error: input file not found: ")
    assert "Traceback" not in result.stderr


def test_prepare_end_to_end_through_the_cli(tmp_path):
    result = run("prepare", "--config", "configs/tiny.yaml", f"--data.root={SHARED_DATA}",
                 f"--data.out_dir={tmp_path}", "--ray.num_cpus=1")
    assert result.returncode == 0, result.stderr
    assert "train" in result.stdout and "29000 in" in result.stdout
    assert (tmp_path / "manifest.json").is_file()


def test_in_process_prepare_ignores_a_cluster_that_ray_start_left_behind(tmp_path):
    """`ray.init()` would try to join the cluster in /tmp/ray/ray_current_cluster, even a dead one."""
    pointer = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
    if pointer.exists():
        pytest.skip("a Ray cluster started with `ray start` is registered on this machine")
    pointer.parent.mkdir(parents=True, exist_ok=True)
    pointer.write_text("127.0.0.1:9")  # nothing listens there
    try:
        result = run("prepare", "--config", "configs/tiny.yaml", f"--data.root={SHARED_DATA}",
                     f"--data.out_dir={tmp_path}", "--ray.num_cpus=1")
    finally:
        pointer.unlink()
    assert result.returncode == 0, result.stderr[-2000:]
