"""Faults a days-long run meets, each done for real: a killed writer, a full disk, a killed Ray
worker, an interrupted `prepare`. Nothing is lost or seen twice; every error names what failed.

(A killed pipeline rank: tests/test_pipeline_training.py; a tracking server that goes away:
tests/test_tracking_server.py.)
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from conftest import REPO, SHARED_DATA, tiny_config

from dist_s2s.data.manifest import load_manifest
from dist_s2s.errors import UserError
from dist_s2s.train import checkpoint as checkpoint_module
from dist_s2s.train.checkpoint import CheckpointDir, load_checkpoint
from dist_s2s.train.trainer import train

pytestmark = pytest.mark.launcher

TINY = str(REPO / "configs" / "tiny.yaml")
# Wide enough that a checkpoint takes a while to write (~12 MB), so a kill can land inside the write.
WIDE = ("--model.hidden_size=256", "--model.embedding_dim=256")


def cli(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "dist_s2s", *arguments]


def train_overrides(prepared, run_dir: Path, *overrides: str) -> list[str]:
    return [f"--data.root={SHARED_DATA}", f"--data.out_dir={prepared.data.out_dir}", f"--train.run_dir={run_dir}",
            "--train.valid_every=1000", "--train.log_every=1", *overrides]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_trainer_killed_while_writing_a_checkpoint_resumes_from_the_previous_one_bit_exactly(prepared_tiny,
                                                                                               tmp_path):
    run_dir = tmp_path / "run"
    arguments = train_overrides(prepared_tiny, run_dir, *WIDE, "--train.checkpoint_every=1",
                                "--train.keep_checkpoints=3")
    checkpoints = run_dir / "checkpoints"
    trainer = subprocess.Popen(cli("train", "--config", TINY, *arguments, "--train.max_steps=100000"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (checkpoints / "index.json").is_file():  # a first checkpoint is complete and listed
            assert time.monotonic() < deadline and trainer.poll() is None, "no checkpoint was ever written"
            time.sleep(0.01)
        while not any(entry.name.endswith(".tmp") for entry in os.scandir(checkpoints)):  # the next write begins
            assert time.monotonic() < deadline and trainer.poll() is None, "no checkpoint write was ever seen"
        trainer.send_signal(signal.SIGKILL)  # mid-write: its temporary file exists
    finally:
        trainer.kill()
        trainer.wait()
    directory = CheckpointDir(checkpoints, 3)
    latest = directory.latest()
    assert any(checkpoints.glob("*.tmp")), "the kill landed inside a write"
    load_checkpoint(latest, directory.expected_sha256(latest))  # intact, checksum as recorded
    step = int(latest.stem.split("-")[1])

    resumed = subprocess.run(cli("train", "--config", TINY, *arguments, f"--train.max_steps={step + 2}",
                                 "--train.resume=true"), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {latest}" in resumed.stderr
    assert "a checkpoint write that an earlier run did not finish" in resumed.stderr
    assert not any(checkpoints.glob("*.tmp"))
    straight = tmp_path / "straight"
    subprocess.run(cli("train", "--config", TINY, *train_overrides(prepared_tiny, straight, *WIDE),
                       f"--train.max_steps={step + 2}"), check=True, capture_output=True, timeout=300)
    assert same_weights(weights(directory.path_of(step + 2)),
                        weights(CheckpointDir(straight / "checkpoints", 3).latest()))


def test_a_full_disk_while_writing_a_checkpoint_is_a_clear_error_and_the_previous_one_stays(prepared_tiny, tmp_path,
                                                                                           monkeypatch):
    real_save, calls = torch.save, []

    def save_on_a_full_disk(payload, handle):
        calls.append(handle.name)
        if len(calls) == 2:  # the second checkpoint: half written, then the disk is full
            handle.write(b"\0" * 4096)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(payload, handle)

    monkeypatch.setattr(checkpoint_module.torch, "save", save_on_a_full_disk)
    run_dir = tmp_path / "run"
    config = tiny_config(tmp_path, *train_overrides(prepared_tiny, run_dir, "--train.max_steps=6",
                                                    "--train.checkpoint_every=2"))
    with pytest.raises(UserError, match=r"cannot write checkpoint .*step-00000004\.pt: No space left on device; "
                                        r"the previous checkpoints .* are untouched"):
        train(config)
    directory = CheckpointDir(run_dir / "checkpoints", 3)
    assert directory.latest() == directory.path_of(2)
    load_checkpoint(directory.latest(), directory.expected_sha256(directory.latest()))
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["index.json", "step-00000002.pt"]


def same_prepared_output(first: Path, second: Path) -> None:
    assert (first / "manifest.json").read_bytes() == (second / "manifest.json").read_bytes()
    for shard in load_manifest(first).shards:
        assert (first / shard.path).read_bytes() == (second / shard.path).read_bytes()
    for vocab in ("vocab.en.txt", "vocab.fr.txt"):
        assert (first / vocab).read_bytes() == (second / vocab).read_bytes()


def prepare_command(out_dir: Path) -> list[str]:
    """Small chunks: many tokenize tasks, so the run lasts long enough to be disturbed."""
    return cli("prepare", "--config", TINY, f"--data.root={SHARED_DATA}", f"--data.out_dir={out_dir}",
               "--data.chunk_lines=1000", "--ray.num_cpus=2")


def test_a_ray_worker_killed_during_prepare_is_retried_and_the_output_is_byte_identical(prepared_tiny, tmp_path):
    out_dir = tmp_path / "data"
    run = subprocess.Popen(prepare_command(out_dir), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           start_new_session=True)
    killed = None
    try:
        deadline = time.monotonic() + 120
        while killed is None:
            assert time.monotonic() < deadline and run.poll() is None, "no tokenize task was seen running"
            for process in psutil.Process(run.pid).children(recursive=True):
                try:
                    if "ray::tokenize_chunk" in " ".join(process.cmdline()):
                        process.kill()
                        killed = process.pid
                        break
                except psutil.NoSuchProcess:
                    continue
        output = run.communicate(timeout=300)[0]
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
    assert run.returncode == 0, output[-3000:]
    same_prepared_output(Path(prepared_tiny.data.out_dir), out_dir)


def test_a_prepare_interrupted_midway_reuses_its_finished_chunks_and_ends_byte_identical(prepared_tiny, tmp_path):
    out_dir = tmp_path / "data"
    run = subprocess.Popen(prepare_command(out_dir), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while len(list(out_dir.glob(".work/*/*/*/receipt.json"))) < 3:
            assert time.monotonic() < deadline and run.poll() is None, "prepare ended before it could be interrupted"
            time.sleep(0.05)
    finally:
        os.killpg(run.pid, signal.SIGKILL)  # the driver and its in-process Ray
        run.wait()
    assert not (out_dir / "manifest.json").exists()
    again = subprocess.run(prepare_command(out_dir), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "reusing" in again.stderr and "tokenized chunks finished by an interrupted run" in again.stderr
    same_prepared_output(Path(prepared_tiny.data.out_dir), out_dir)
