"""`train.precision`: bf16 on CPU (oneDNN) tracks fp32, keeps fp32 weights, and resumes exactly.

The tiny config at lr 0.1: at the recipe's 0.7 a 16-cell model is chaotic (gradient norms jump to 18
within 10 steps), so any perturbation, fp32 rounding included, would diverge; at 0.1 the trajectories
are smooth and the tolerances below measure the number format, not the chaos. Stated: train loss
within 0.1% and gradient norm within 1% of fp32 at every one of 20 steps, validation perplexity within 1%.
"""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, SHARED_DATA, launcher_env, tiny_config

from dist_s2s.train import precision
from dist_s2s.train.checkpoint import CheckpointDir, load_checkpoint, model_weights
from dist_s2s.train.trainer import train

SMOOTH = ("--optim.lr=0.1", "--train.max_steps=20", "--train.valid_every=20", "--train.checkpoint_every=10",
          "--train.log_every=1")


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def single_run(prepared, tmp_path: Path, name: str, *overrides: str) -> Path:
    run_dir = tmp_path / name / "run"
    train(tiny_config(run_dir.parent, f"--data.out_dir={prepared.data.out_dir}", f"--train.run_dir={run_dir}",
                      *SMOOTH, *overrides))
    return run_dir


def assert_tracks(run: list[dict], reference: list[dict]) -> None:
    steps = [m for m in run if "train/loss" in m]
    expected = [m for m in reference if "train/loss" in m]
    assert len(steps) == len(expected) == 20
    for ours, theirs in zip(steps, expected):
        assert math.isfinite(ours["train/grad_norm"])
        assert ours["train/loss"] == pytest.approx(theirs["train/loss"], rel=1e-3), ours["step"]
        assert ours["train/grad_norm"] == pytest.approx(theirs["train/grad_norm"], rel=1e-2), ours["step"]
    assert run[-1]["valid/ppl"] == pytest.approx(reference[-1]["valid/ppl"], rel=1e-2)


@pytest.fixture(scope="module")
def fp32_run(prepared_tiny, tmp_path_factory) -> Path:
    return single_run(prepared_tiny, tmp_path_factory.mktemp("fp32"), "fp32")


@pytest.fixture(scope="module")
def bf16_run(prepared_tiny, tmp_path_factory) -> Path:
    return single_run(prepared_tiny, tmp_path_factory.mktemp("bf16"), "bf16", "--train.precision=bf16")


ATTENTION = "--model.attention=luong"


@pytest.fixture(scope="module")
def fp32_attention_run(prepared_tiny, tmp_path_factory) -> Path:
    return single_run(prepared_tiny, tmp_path_factory.mktemp("fp32-attention"), "fp32", ATTENTION)


@pytest.fixture(scope="module")
def bf16_attention_run(prepared_tiny, tmp_path_factory) -> Path:
    return single_run(prepared_tiny, tmp_path_factory.mktemp("bf16-attention"), "bf16", "--train.precision=bf16",
                      ATTENTION)


def test_bf16_on_one_device_tracks_fp32_over_20_steps(fp32_run, bf16_run):
    assert_tracks(metrics(bf16_run), metrics(fp32_run))
    assert metrics(bf16_run)[0]["train/loss"] != metrics(fp32_run)[0]["train/loss"], "bf16 really ran"


def test_the_lstm_kernels_dtype_is_logged_once(prepared_tiny, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    single_run(prepared_tiny, tmp_path, "logged", "--train.precision=bf16", "--train.max_steps=2")
    said = [r.getMessage() for r in caplog.records if "the LSTM kernels ran in" in r.getMessage()]
    assert said == ["precision bf16: the LSTM kernels ran in torch.bfloat16 (MkldnnRnnLayerBackward0)"]


def test_a_bf16_checkpoint_holds_fp32_weights_and_resumes_bit_identical(prepared_tiny, bf16_run, tmp_path):
    path = CheckpointDir(bf16_run / "checkpoints", 3).path_of(20)
    weights = model_weights(path, load_checkpoint(path))
    assert {tensor.dtype for tensor in weights.values()} == {torch.float32}
    resumed = tmp_path / "resumed" / "run"
    single_run(prepared_tiny, tmp_path / "resumed", "first", "--train.precision=bf16", "--train.max_steps=10",
               f"--train.run_dir={resumed}")
    single_run(prepared_tiny, tmp_path / "resumed", "again", "--train.precision=bf16", f"--train.run_dir={resumed}",
               "--train.resume=true")
    again = CheckpointDir(resumed / "checkpoints", 3).path_of(20)
    straight = model_weights(again, load_checkpoint(again))
    assert all(torch.equal(straight[k], weights[k]) for k in weights)


@pytest.mark.launcher
@pytest.mark.parametrize("schedule", [("--parallel.schedule=wavefront",),
                                      ("--parallel.schedule=1f1b", "--parallel.micro_batches=2"),
                                      ("--parallel.schedule=wavefront", ATTENTION)],
                         ids=["wavefront", "1f1b", "wavefront-attention"])
def test_a_bf16_two_stage_pipeline_tracks_fp32_and_agrees_with_bf16_on_one_device(prepared_tiny, request, tmp_path,
                                                                                  schedule):
    attention = ATTENTION in schedule
    fp32_run = request.getfixturevalue("fp32_attention_run" if attention else "fp32_run")
    bf16_run = request.getfixturevalue("bf16_attention_run" if attention else "bf16_run")
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "dist_s2s",
               "train", "--config", str(REPO / "configs" / "tiny.yaml"), f"--data.root={SHARED_DATA}",
               f"--data.out_dir={prepared_tiny.data.out_dir}", f"--train.run_dir={run_dir}", *SMOOTH,
               "--train.precision=bf16", "--parallel.stages=2", *schedule]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=launcher_env(tmp_path),
                            cwd=tmp_path)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert_tracks(metrics(run_dir), metrics(fp32_run))
    ours = [m["train/grad_norm"] for m in metrics(run_dir) if "train/grad_norm" in m]
    one_device = [m["train/grad_norm"] for m in metrics(bf16_run) if "train/grad_norm" in m]
    assert ours == pytest.approx(one_device, rel=1e-2)
    path = CheckpointDir(run_dir / "checkpoints", 3).path_of(20)
    assert {t.dtype for t in model_weights(path, load_checkpoint(path)).values()} == {torch.float32}


def test_tf32_sets_both_switches_and_fp32_clears_them():
    try:
        precision.configure("tf32")
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        precision.configure("fp32")
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    finally:
        precision.configure("fp32")
