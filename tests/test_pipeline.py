"""The DeepSpeed pipeline (gloo, CPU) trains to the single-device trainer's parameters."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import (
    ADAM,
    ADAM_STEP_TOLERANCE,
    REPO,
    assert_lengths_varied,
    assert_runs_under_nccl_rules,
    assert_stage_parts_merge_into_the_single_device_weights,
    free_port,
    launcher_env,
    own_device_waits,
    run_pipeline,
)
from sync_counter import ONE_F_ONE_B_STAGE_BUDGET, WAVEFRONT_STEP_BUDGET

pytestmark = pytest.mark.launcher


OPTIMIZERS = {"sgd": ("--optim.optimizer=sgd",), "adam": ADAM}
PARAMETER_TOLERANCE = {"sgd": 1e-5, "adam": ADAM_STEP_TOLERANCE}


@pytest.mark.parametrize("stages, data, micro, layers, shards, dropout, attention, optimizer", [
    (2, 1, 2, 2, 2, 0.3, "luong", "sgd"),  # dropout: interleaved micro-batch rows, each trimmed to its longest, draw
    # their masks; the top stage attends over its micro-batch's own encoder outputs
    (4, 1, 1, 2, 2, 0.0, "none", "sgd"),  # a softmax stage receives (float, int64, float, float, float): dtype aliasing
    (2, 2, 2, 2, 2, 0.0, "luong", "adam"),  # 2 stages × 2 data replicas, each stage's Adam on its own parameters
])  # the paper's 8-stage layout: test_pipeline_training.py, under the deepspeed launcher, both schedules
def test_pipeline_parameters_and_losses_match_the_single_device_trainer(prepared_tiny, tmp_path, stages, data, micro,
                                                                        layers, shards, dropout, attention, optimizer):
    ranks = run_pipeline(prepared_tiny, tmp_path, stages * data, f"--parallel.stages={stages}",
                         f"--parallel.data={data}", "--parallel.schedule=1f1b", f"--parallel.micro_batches={micro}",
                         f"--model.num_layers={layers}", f"--model.softmax_shards={shards}",
                         f"--model.dropout={dropout}", f"--model.attention={attention}", "--optim.max_grad_norm=1.0",
                         *OPTIMIZERS[optimizer])
    assert_matches_the_single_device_trainer(ranks, tmp_path, stages=stages, layers=layers, micro=micro,
                                             tolerance=PARAMETER_TOLERANCE[optimizer])
    for rank in ranks:  # its lengths once a micro-batch (DeepSpeed's 1F1B messaging adds its own: docs/platform.md)
        assert max(own_device_waits(rank)) <= micro * ONE_F_ONE_B_STAGE_BUDGET, rank["where"]


@pytest.mark.parametrize(
    "stages, data, placement, layers, shards, chunk_steps, dropout, attention, prepared, optimizer", [
        (2, 1, "chain", 2, 2, 4, 0.0, "none", "prepared_tiny_subwords", "sgd"),  # [both LSTM layers | both softmax
        # shards], on SentencePiece pieces
        (2, 1, "colocated", 2, 2, 3, 0.3, "luong", "prepared_tiny", "adam"),  # each stage: one layer pair and half
        # the vocabulary; its chunks' masks; the top stage attends over the encoder chunks it kept
        (4, 1, "chain", 2, 2, 5, 0.0, "luong", "prepared_tiny", "sgd"),  # one unit a stage: the shards in parallel
        (2, 2, "colocated", 2, 2, 3, 0.3, "none", "prepared_tiny", "sgd"),  # 2 replicas × 2 stages: other rows each
    ])  # the paper's 8-stage layout: test_pipeline_training.py, under the deepspeed launcher, both schedules
def test_the_wavefront_matches_the_single_device_trainer(request, tmp_path, stages, data, placement, layers,
                                                         shards, chunk_steps, dropout, attention, prepared, optimizer):
    ranks = run_pipeline(request.getfixturevalue(prepared), tmp_path, stages * data, f"--parallel.stages={stages}",
                         f"--parallel.data={data}", "--parallel.schedule=wavefront",
                         f"--parallel.placement={placement}", f"--parallel.chunk_steps={chunk_steps}",
                         f"--model.num_layers={layers}", f"--model.softmax_shards={shards}",
                         f"--model.dropout={dropout}", f"--model.attention={attention}", "--optim.max_grad_norm=1.0",
                         *OPTIMIZERS[optimizer])
    assert_matches_the_single_device_trainer(ranks, tmp_path, stages=stages, layers=layers, micro=1,
                                             tolerance=PARAMETER_TOLERANCE[optimizer])
    for rank in ranks:  # the real engine, DeepSpeed's optimizer step and the clipping all-reduce included
        assert any(rank["chunk_boundary_inside_some_past_others"]), "a chunk ended inside some sentences only"
        assert max(own_device_waits(rank)) <= WAVEFRONT_STEP_BUDGET and not any(rank["syncs"]), rank["where"]


def assert_matches_the_single_device_trainer(ranks: list[dict], tmp_path, *, stages: int, layers: int,
                                             micro: int, tolerance: float = 1e-5) -> None:
    """What both equality tables hold a pipeline to, rank by rank, against the single-device trainer stepping
    beside it: every stage present; each stage's parameters (`tolerance`), the losses and the clipping norms (relative
    1e-5), clipping having triggered; batches of varied widths; the stages' checkpoint parts merging into the
    single-device weights; every group's timeout parallel.timeout_s once set up; the run's communication
    completing under NCCL's rules (training, an evaluation pass, chunk widths 1 and one a side under the
    wavefront)."""
    assert sorted({r["stage"] for r in ranks}) == list(range(stages))
    for rank in ranks:
        assert rank["max_difference"] < tolerance, rank
        assert len(rank["group_timeouts"]) > 1 and set(rank["group_timeouts"]) == {rank["timeout_s"]}, \
            "once set up, every group of a rank (its own, DeepSpeed's, the wavefront's) fails after parallel.timeout_s"
        assert rank["losses"] == pytest.approx(rank["reference_losses"], rel=1e-5)
        assert rank["norms"] == pytest.approx(rank["reference_norms"], rel=1e-5), "clipping used the global norm"
        assert min(rank["reference_norms"]) > 1.0, "clipping triggered at every step"
    assert_lengths_varied(ranks[0]["micro_batch_shapes"], micro)
    assert_stage_parts_merge_into_the_single_device_weights(tmp_path, [r["part"] for r in ranks if r["part"]], layers,
                                                            tolerance)
    assert_runs_under_nccl_rules(tmp_path / "comms")


def test_the_old_posting_order_is_rejected_by_the_nccl_rules(prepared_tiny, tmp_path):
    """Every receive of a step posted first on the default group, paired by tag: gloo runs it (and it still
    matches one device), NCCL would not; the replay names the two receives each rank is stuck behind."""
    from dist_s2s.parallel.nccl_rules import COMMUNICATOR_MODELS, load, replay

    ranks = run_pipeline(prepared_tiny, tmp_path, 2, "--parallel.stages=2", "--parallel.schedule=wavefront",
                         "--model.num_layers=2", "--model.softmax_shards=2", steps=1,
                         env={"POSTED_ON_THE_WORLD_GROUP": "1"})
    assert all(rank["max_difference"] < 1e-5 for rank in ranks)
    logs = load(tmp_path / "comms")
    for model in COMMUNICATOR_MODELS:
        verdict = replay(logs, model)
        assert not verdict.ok
        assert "waits on rank 0" in str(verdict) and "waits on rank 1" in str(verdict), str(verdict)
        assert "recv from rank 1" in str(verdict) and "recv from rank 0" in str(verdict), str(verdict)


def test_a_two_node_job_meeting_at_127_0_0_1_matches_the_single_device_trainer(prepared_tiny, tmp_path):
    """Two `torchrun --nnodes 2 --node_rank i` processes, one stage each, as on two machines."""
    port = free_port()
    env = launcher_env(tmp_path)
    nodes = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={rank}", "--nproc_per_node=1",
         "--master_addr=127.0.0.1", f"--master_port={port}", str(REPO / "tests" / "pipeline_worker.py"),
         str(tmp_path), "3", f"--data.out_dir={prepared_tiny.data.out_dir}", "--parallel.stages=2",
         "--parallel.schedule=1f1b", "--parallel.micro_batches=2", "--model.num_layers=2", "--model.softmax_shards=2",
         "--optim.max_grad_norm=1.0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path) for rank in range(2)]
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    ranks = [json.loads((tmp_path / f"rank-{rank}.json").read_text()) for rank in range(2)]
    assert sorted(r["stage"] for r in ranks) == [0, 1]
    assert all(r["max_difference"] < 1e-5 for r in ranks)
