"""`dist-s2s train` launched as pipeline ranks (torchrun, deepspeed) trains like the single-device trainer.

Every run here goes through the real launchers and the real command line on the session's prepared
tiny data, with `optim.max_grad_norm=1.0` so the gradient is rescaled at every step.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import (
    ADAM,
    ADAM_STEP_TOLERANCE,
    REPO,
    SHARED_DATA,
    assert_optimizer_states_match,
    assert_runs_under_nccl_rules,
    free_port,
    launcher_env,
    tiny_config,
)

from dist_s2s.errors import UserError
from dist_s2s.train.checkpoint import CheckpointDir, load_checkpoint, model_weights, read_model
from dist_s2s.train.trainer import train

pytestmark = pytest.mark.launcher

CLIPPED = "--optim.max_grad_norm=1.0"


def run_overrides(prepared, run_dir: Path, *overrides: str) -> list[str]:
    """The session's prepared tiny data, a log line every step, validation and a checkpoint every 3."""
    return [f"--data.root={SHARED_DATA}", f"--data.out_dir={prepared.data.out_dir}", f"--train.run_dir={run_dir}",
            "--train.log_every=1", "--train.valid_every=3", "--train.checkpoint_every=3", CLIPPED, *overrides]


def train_arguments(prepared, run_dir: Path, *overrides: str) -> list[str]:
    return ["train", "--config", str(REPO / "configs" / "tiny.yaml"), *run_overrides(prepared, run_dir, *overrides)]


def torchrun(prepared, tmp_path: Path, processes: int, run_dir: Path, *overrides: str,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               "-m", "dist_s2s", *train_arguments(prepared, run_dir, *overrides)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env or launcher_env(tmp_path),
                          cwd=tmp_path)


def succeeded(result: subprocess.CompletedProcess) -> str:
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return output


def weights_at(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    path = CheckpointDir(run_dir / "checkpoints", 3).path_of(step)
    return model_weights(path, load_checkpoint(path))


def largest_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def single_device_run(prepared, run_dir: Path, *overrides: str) -> Path:
    train(tiny_config(run_dir.parent, *run_overrides(prepared, run_dir, *overrides)))
    return run_dir


@pytest.fixture(scope="module")
def reference(prepared_tiny, tmp_path_factory) -> Path:
    """The single-device trainer, 6 steps on the tiny config (2 layers, 2 softmax shards)."""
    return single_device_run(prepared_tiny, tmp_path_factory.mktemp("single") / "run", "--train.max_steps=6")


@pytest.fixture(scope="module")
def two_stages(prepared_tiny, tmp_path_factory) -> tuple[Path, str]:
    """torchrun, 2 stages × 2 micro-batches, 6 steps; its run directory and console output."""
    tmp_path = tmp_path_factory.mktemp("two_stages")
    run_dir = tmp_path / "run"
    output = succeeded(torchrun(prepared_tiny, tmp_path, 2, run_dir, "--parallel.stages=2",
                                "--parallel.schedule=1f1b", "--parallel.micro_batches=2", "--train.max_steps=6"))
    return run_dir, output


def test_two_stages_under_torchrun_end_at_the_single_device_weights(two_stages, reference):
    run_dir, _ = two_stages
    for step in (3, 6):
        assert largest_difference(weights_at(run_dir, step), weights_at(reference, step)) < 1e-5
    checkpoint = load_checkpoint(CheckpointDir(run_dir / "checkpoints", 3).path_of(6))
    parts = [part["file"] for part in checkpoint["model_parts"]]
    assert parts == ["step-00000006.stage-0.pt", "step-00000006.stage-1.pt"]


def test_only_rank_zero_logs_to_the_console_and_to_mlflow(two_stages):
    import mlflow

    run_dir, output = two_stages
    assert output.count("step 6 | epoch") == 1, output[-3000:]
    assert output.count("trained to step 6") == 1
    runs = mlflow.MlflowClient(f"sqlite:///{run_dir}/mlflow.db").search_runs(
        [e.experiment_id for e in mlflow.MlflowClient(f"sqlite:///{run_dir}/mlflow.db").search_experiments()])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.metrics["train/loss"] > 0
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 6 + 2  # 6 log lines, 2 validations


def test_a_pipeline_run_stopped_and_resumed_ends_bit_identical_to_one_straight_run(two_stages, prepared_tiny, tmp_path):
    run_dir = tmp_path / "run"
    layout = ("--parallel.stages=2", "--parallel.schedule=1f1b", "--parallel.micro_batches=2")
    succeeded(torchrun(prepared_tiny, tmp_path, 2, run_dir, *layout, "--train.max_steps=3"))
    succeeded(torchrun(prepared_tiny, tmp_path, 2, run_dir, *layout, "--train.max_steps=6", "--train.resume=true"))
    straight = weights_at(two_stages[0], 6)
    resumed = weights_at(run_dir, 6)
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_a_two_stage_checkpoint_resumes_as_one_stage_with_two_data_replicas(two_stages, reference, prepared_tiny,
                                                                             tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    source = CheckpointDir(two_stages[0] / "checkpoints", 3)
    for file in source.directory.glob("step-00000003.*"):
        (run_dir / "checkpoints" / file.name).write_bytes(file.read_bytes())
    (run_dir / "checkpoints" / "index.json").write_text(
        json.dumps({"checkpoints": [{"step": 3, "file": "step-00000003.pt",
                                     "sha256": source.expected_sha256(source.path_of(3))}]}))
    output = succeeded(torchrun(prepared_tiny, tmp_path, 2, run_dir, "--parallel.stages=1", "--parallel.data=2",
                                "--parallel.schedule=1f1b", "--parallel.micro_batches=2", "--train.max_steps=6",
                                "--train.resume=true"))
    assert "resumed at step 3" in output
    assert largest_difference(weights_at(run_dir, 6), weights_at(reference, 6)) < 1e-5


WAVEFRONT = ("--parallel.stages=2", "--parallel.schedule=wavefront", "--parallel.placement=colocated",
             "--parallel.chunk_steps=3")


def copy_checkpoint(source_run: Path, step: int, run_dir: Path) -> None:
    """The checkpoint of `step` (file and stage parts) as the only one of a new run directory."""
    (run_dir / "checkpoints").mkdir(parents=True)
    source = CheckpointDir(source_run / "checkpoints", 3)
    for file in source.directory.glob(f"step-{step:08d}.*"):
        (run_dir / "checkpoints" / file.name).write_bytes(file.read_bytes())
    (run_dir / "checkpoints" / "index.json").write_text(
        json.dumps({"checkpoints": [{"step": step, "file": source.path_of(step).name,
                                     "sha256": source.expected_sha256(source.path_of(step))}]}))


@pytest.fixture(scope="module")
def wavefront_run(prepared_tiny, tmp_path_factory) -> Path:
    """torchrun, the wavefront on 2 co-located stages, 6 steps (validation and checkpoints every 3)."""
    tmp_path = tmp_path_factory.mktemp("wavefront")
    succeeded(torchrun(prepared_tiny, tmp_path, 2, tmp_path / "run", *WAVEFRONT, "--train.max_steps=6"))
    return tmp_path / "run"


def test_the_wavefront_trains_validates_and_checkpoints_like_one_device(wavefront_run, reference):
    for step in (3, 6):
        assert largest_difference(weights_at(wavefront_run, step), weights_at(reference, step)) < 1e-5
    metrics = [json.loads(line) for line in (wavefront_run / "metrics.jsonl").read_text().splitlines()]
    expected = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [m["step"] for m in expected]
    for ours, theirs in zip(metrics, expected):
        for key in ("train/loss", "train/grad_norm", "valid/ppl"):
            if key in theirs:
                assert ours[key] == pytest.approx(theirs[key], rel=1e-5), key
            else:
                assert key not in ours


def test_a_wavefront_run_stopped_and_resumed_ends_bit_identical_to_one_straight_run(wavefront_run, prepared_tiny,
                                                                                   tmp_path):
    run_dir = tmp_path / "run"
    succeeded(torchrun(prepared_tiny, tmp_path, 2, run_dir, *WAVEFRONT, "--train.max_steps=3"))
    succeeded(torchrun(prepared_tiny, tmp_path, 2, run_dir, *WAVEFRONT, "--train.max_steps=6", "--train.resume=true"))
    straight, resumed = weights_at(wavefront_run, 6), weights_at(run_dir, 6)
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_a_wavefront_checkpoint_resumes_under_1f1b_and_on_one_device(wavefront_run, reference, prepared_tiny, tmp_path):
    under_1f1b = tmp_path / "1f1b" / "run"
    copy_checkpoint(wavefront_run, 3, under_1f1b)
    output = succeeded(torchrun(prepared_tiny, tmp_path, 2, under_1f1b, "--parallel.stages=2",
                                "--parallel.schedule=1f1b", "--parallel.micro_batches=2", "--train.max_steps=6",
                                "--train.resume=true"))
    assert "resumed at step 3" in output
    assert largest_difference(weights_at(under_1f1b, 6), weights_at(reference, 6)) < 1e-5
    one_device = tmp_path / "single" / "run"
    copy_checkpoint(wavefront_run, 3, one_device)
    single_device_run(prepared_tiny, one_device, "--train.max_steps=6", "--train.resume=true")
    assert largest_difference(weights_at(one_device, 6), weights_at(reference, 6)) < 1e-5


def optimizer_at(run_dir: Path, step: int) -> dict:
    path = CheckpointDir(run_dir / "checkpoints", 3).path_of(step)
    return read_model(path, load_checkpoint(path))[1]


def test_adam_moments_travel_with_a_wavefront_checkpoint_through_convert_and_on_to_one_device(prepared_tiny,
                                                                                              tmp_path):
    reference = single_device_run(prepared_tiny, tmp_path / "single" / "run", *ADAM, "--train.max_steps=6")
    wavefront = tmp_path / "wavefront" / "run"
    succeeded(torchrun(prepared_tiny, tmp_path, 2, wavefront, *WAVEFRONT, *ADAM, "--train.max_steps=3"))
    moments, expected = optimizer_at(wavefront, 3), optimizer_at(reference, 3)
    assert moments["kind"] == "adam" and moments["step"] == 3
    assert_optimizer_states_match(moments, expected)

    from dist_s2s.cli import main

    source = CheckpointDir(wavefront / "checkpoints", 3).path_of(3)
    assert main(["convert", "--checkpoint", str(source), "--output", str(tmp_path / "single.pt")]) == 0
    assert main(["convert", "--checkpoint", str(tmp_path / "single.pt"), "--output", str(tmp_path / "three.pt"),
                 "--stages", "3"]) == 0
    for converted in (tmp_path / "single.pt", tmp_path / "three.pt"):
        state = read_model(converted, load_checkpoint(converted))[1]
        assert all(torch.equal(state["exp_avg_sq"][k], moments["exp_avg_sq"][k]) for k in moments["exp_avg_sq"])

    one_device = tmp_path / "resumed" / "run"
    copy_checkpoint(wavefront, 3, one_device)
    single_device_run(prepared_tiny, one_device, *ADAM, "--train.max_steps=6", "--train.resume=true")
    assert largest_difference(weights_at(one_device, 6), weights_at(reference, 6)) < ADAM_STEP_TOLERANCE


PAPER_LAYOUT = ("--model.num_layers=4", "--model.softmax_shards=4", "--model.attention=luong", "--train.max_steps=4",
                "--train.valid_every=4")  # one validation, at the end: 8 stages validate slowly on 2 cores


@pytest.fixture(scope="module")
def paper_layout_on_one_device(prepared_tiny, tmp_path_factory) -> Path:
    return single_device_run(prepared_tiny, tmp_path_factory.mktemp("paper-layout") / "run", *PAPER_LAYOUT)


@pytest.mark.parametrize("schedule", [("--parallel.schedule=1f1b", "--parallel.micro_batches=4"),
                                      ("--parallel.schedule=wavefront", "--parallel.chunk_steps=3")],
                         ids=["1f1b", "wavefront"])
def test_the_papers_eight_stage_layout_under_the_deepspeed_launcher_matches_one_device(
        prepared_tiny, paper_layout_on_one_device, tmp_path, schedule):
    """4 LSTM layer stages + 4 softmax shard stages: `deepspeed --num_gpus 8` on gloo, either schedule
    (the suite's one run of the paper's 8-stage layout; the top layer's stage attends)."""
    paper_layout, single = PAPER_LAYOUT, paper_layout_on_one_device
    run_dir = tmp_path / "pipeline"
    command = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "8", "--master_port", str(free_port()),
               "--module", "dist_s2s", *train_arguments(prepared_tiny, run_dir, *paper_layout,
                                                        "--parallel.stages=8", *schedule)]
    shared_memory_before = set(Path("/dev/shm").glob("deepspeed*"))
    env = {**launcher_env(tmp_path), "DIST_S2S_COMM_LOG": str(tmp_path / "comms")}
    succeeded(subprocess.run(command, capture_output=True, text=True, timeout=400, env=env, cwd=tmp_path))
    # DeepSpeed's CPU shm all-reduce (on under its launcher) would leave 69 MB a rank in /dev/shm, never
    # unlinked, and a later job on the same port could open them and abort: it is switched off.
    assert set(Path("/dev/shm").glob("deepspeed*")) == shared_memory_before
    assert len(load_checkpoint(CheckpointDir(run_dir / "checkpoints", 3).path_of(4))["model_parts"]) == 8
    assert largest_difference(weights_at(run_dir, 4), weights_at(single, 4)) < 1e-5
    assert_runs_under_nccl_rules(tmp_path / "comms")  # 4 steps, the last one's validation, the checkpoint


def test_stages_times_replicas_other_than_the_world_size_is_a_clear_error(prepared_tiny, tmp_path):
    result = torchrun(prepared_tiny, tmp_path, 3, tmp_path / "run", "--parallel.stages=2", "--train.max_steps=1")
    assert result.returncode != 0
    assert "parallel.stages × parallel.data = 2 × 1 = 2, but 3 processes were launched" in result.stderr


def test_several_stages_without_a_launcher_say_how_to_launch(prepared_tiny, tmp_path):
    config = tiny_config(tmp_path, f"--data.out_dir={prepared_tiny.data.out_dir}", "--parallel.stages=2")
    with pytest.raises(UserError, match=r"launch with `torchrun --nproc_per_node 2 -m dist_s2s train"):
        train(config)


def test_pipeline_ranks_do_not_prepare_data_themselves(tmp_path):
    result = torchrun(tiny_config(tmp_path), tmp_path, 2, tmp_path / "run", "--parallel.stages=2")
    assert result.returncode != 0
    assert "run `dist-s2s prepare` with the same --config first" in result.stderr


def test_converting_a_pipeline_checkpoint_to_one_file_and_back_to_stages_keeps_every_weight(two_stages, tmp_path):
    from dist_s2s.cli import main

    pipeline = CheckpointDir(two_stages[0] / "checkpoints", 3).path_of(6)
    assert main(["convert", "--checkpoint", str(pipeline), "--output", str(tmp_path / "single.pt")]) == 0
    single = load_checkpoint(tmp_path / "single.pt")
    assert "model" in single and single["loader"] == load_checkpoint(pipeline)["loader"]
    assert main(["convert", "--checkpoint", str(tmp_path / "single.pt"), "--output", str(tmp_path / "three.pt"),
                 "--stages", "3"]) == 0
    three = load_checkpoint(tmp_path / "three.pt")
    assert len(three["model_parts"]) == 3
    original = model_weights(pipeline, load_checkpoint(pipeline))
    for converted in (single["model"], model_weights(tmp_path / "three.pt", three)):
        assert all(torch.equal(original[k], converted[k]) for k in original)


def start_two_nodes(prepared, tmp_path: Path, *overrides: str) -> list[subprocess.Popen]:
    """Two `torchrun --nnodes 2` agents meeting at 127.0.0.1, one rank (one stage) each."""
    port = free_port()
    return [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={rank}", "--nproc_per_node=1",
         "--master_addr=127.0.0.1", f"--master_port={port}", "-m", "dist_s2s",
         *train_arguments(prepared, tmp_path / "run", "--parallel.stages=2",  # the wavefront, the default
                          "--train.max_steps=100000", "--train.valid_every=100000", *overrides)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=launcher_env(tmp_path), cwd=tmp_path,
        start_new_session=True) for rank in range(2)]


def worker_of(agent: subprocess.Popen, rank: int = 0) -> int:
    """The pid of the worker of this local rank that torchrun (`agent`) started."""
    import psutil

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        workers = [p for p in psutil.Process(agent.pid).children(recursive=True) if "dist_s2s" in " ".join(p.cmdline())]
        ranked = [p for p in workers if p.environ().get("LOCAL_RANK") == str(rank)]
        if ranked:
            return ranked[0].pid
        time.sleep(0.5)
    raise AssertionError(f"torchrun started no worker of local rank {rank}")


def wait_until_training(run_dir: Path, nodes: list[subprocess.Popen]) -> None:
    deadline = time.monotonic() + 120
    while not ((run_dir / "metrics.jsonl").is_file() and (run_dir / "metrics.jsonl").read_text().count("\n") >= 3):
        ended = [node for node in nodes if node.poll() is not None]
        assert not ended, "training never started: " + ended[0].communicate(timeout=30)[0][-3000:]
        assert time.monotonic() < deadline, "training never started in 120 s"
        time.sleep(0.5)


@pytest.mark.parametrize("fault, signal_number, seconds", [
    ("killed", signal.SIGKILL, 30),   # the peer's sockets close: gloo fails at once
    ("hung", signal.SIGSTOP, 60),     # nothing closes: parallel.timeout_s=5 ends the wait
])
def test_a_rank_that_dies_or_hangs_makes_the_other_exit_with_a_clear_error(prepared_tiny, tmp_path, fault,
                                                                            signal_number, seconds):
    nodes = start_two_nodes(prepared_tiny, tmp_path, "--parallel.timeout_s=5")
    victim = None
    try:
        wait_until_training(tmp_path / "run", nodes)
        victim = worker_of(nodes[1])
        os.kill(victim, signal_number)
        hit = time.monotonic()
        output = nodes[0].communicate(timeout=seconds)[0]
        assert time.monotonic() - hit < seconds
        assert nodes[0].returncode != 0
        assert "dist-s2s: error: rank 0 lost contact with another rank at step" in output, output[-3000:]
        assert "Resume with --train.resume=true" in output
    finally:  # torchrun puts its workers in their own process group: a stopped one must be killed by pid
        if victim is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
        for node in nodes:
            if node.poll() is None:
                os.killpg(node.pid, signal.SIGKILL)
                node.wait()


def test_a_rank_slow_to_set_up_is_waited_for_and_not_taken_for_a_lost_one(prepared_tiny, tmp_path):
    """parallel.timeout_s bounds the waits of training, not of setting up: rank 0 starts the MLflow run
    before the first step, and a tracking server that takes longer than timeout_s to answer (here one
    that never does: rank 0 gives up on it after a 4 s request and trains on) must not make rank 1, already
    waiting for its first activations, report a lost rank. The ranks meet once set up, under
    parallel.start_timeout_s."""
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts connections, never answers
        env = {**launcher_env(tmp_path), "MLFLOW_HTTP_REQUEST_TIMEOUT": "4", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
        output = succeeded(torchrun(prepared_tiny, tmp_path, 2, tmp_path / "run", "--parallel.stages=2",
                                    "--parallel.timeout_s=2", "--train.max_steps=2",
                                    f"--tracking.uri=http://127.0.0.1:{silent.getsockname()[1]}", env=env))
    assert re.search(r"MLflow at http://127\.0\.0\.1:\d+ failed", output)
    assert "trained to step 2" in output


RESTARTED = ("--train.max_steps=100", "--train.checkpoint_every=40", "--train.valid_every=100000",
             "--train.log_every=20")


def restartable(prepared, tmp_path: Path, run_dir: Path, processes: int, *overrides: str) -> list[str]:
    """torchrun with one restart allowed, meeting at a c10d rendezvous on 127.0.0.1 (elastic: --nnodes=1:1)."""
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes=1:1", "--rdzv-backend=c10d",
            f"--rdzv-endpoint=127.0.0.1:{free_port()}", "--max-restarts=1", f"--nproc_per_node={processes}",
            "-m", "dist_s2s", *train_arguments(prepared, run_dir, *overrides, *RESTARTED)]


@pytest.mark.parametrize("processes, layout", [
    (2, ("--parallel.stages=2",)),
    (4, ("--parallel.stages=2", "--parallel.data=2", "--parallel.schedule=1f1b", "--parallel.micro_batches=2")),
    (1, ()),
], ids=["wavefront-2-stages", "1f1b-2-stages-x-2-replicas", "one-device"])
def test_a_rank_killed_under_torchrun_max_restarts_is_restarted_and_the_job_ends_bit_identical(
        prepared_tiny, tmp_path, processes, layout):
    """SIGKILL a worker mid-run: torchrun restarts the job's workers, which resume from the latest checkpoint by
    themselves, say so (attempt, checkpoint, steps repeated) in the log and in MLflow, and end at the weights of
    a run never interrupted (max abs difference 0.0)."""
    import mlflow

    run_dir = tmp_path / "run"
    job = subprocess.Popen(restartable(prepared_tiny, tmp_path, run_dir, processes, *layout), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, env=launcher_env(tmp_path), cwd=tmp_path,
                           start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not ((run_dir / "last_step").is_file() and int((run_dir / "last_step").read_text() or 0) >= 50):
            assert time.monotonic() < deadline and job.poll() is None, "training never got past step 50"
            time.sleep(0.1)
        os.kill(worker_of(job, rank=processes - 1), signal.SIGKILL)
        output = job.communicate(timeout=300)[0]
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert job.returncode == 0, output[-4000:]
    restart = re.search(r"train: restart 1 \(torchrun restarted the job's workers\): resumed from "
                        r"step-00000040\.pt at step 40; the failed attempt had finished step (\d+), so (\d+) steps "
                        r"run again \(at most train\.checkpoint_every=40\)", output)
    assert restart, output[-4000:]
    assert int(restart.group(2)) == int(restart.group(1)) - 40 <= 40
    straight = tmp_path / "straight"
    succeeded(subprocess.run(restartable(prepared_tiny, tmp_path, straight, processes, *layout), capture_output=True,
                             text=True, timeout=300, env=launcher_env(tmp_path), cwd=tmp_path))
    assert largest_difference(weights_at(run_dir, 100), weights_at(straight, 100)) == 0.0
    run_id = (run_dir / "mlflow_run_id").read_text().strip()
    run = mlflow.MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}").get_run(run_id)
    assert run.data.tags["restarts"] == "1" and run.data.metrics["train/restart"] == 1


def single_node_job(prepared, tmp_path: Path, launcher: str) -> subprocess.Popen:
    """2 stages on one machine under `torchrun --standalone` or `deepspeed --num_gpus 2`, running long;
    output to tmp_path/job.log (a pipe nobody reads fills and stalls the ranks)."""
    start = {"torchrun": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "dist_s2s"],
             "deepspeed": [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port",
                           str(free_port()), "--module", "dist_s2s"]}[launcher]
    return subprocess.Popen(
        [*start, *train_arguments(prepared, tmp_path / "run", "--parallel.stages=2",
                                  "--train.max_steps=100000", "--train.valid_every=100000")],
        stdout=open(tmp_path / "job.log", "w"), stderr=subprocess.STDOUT, env=launcher_env(tmp_path), cwd=tmp_path,
        start_new_session=True)


def worker_rank(job: subprocess.Popen, rank: int) -> int:
    """The pid of the launched worker process with RANK=rank."""
    import psutil

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for process in psutil.Process(job.pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if "dist_s2s" in " ".join(process.cmdline()) and process.environ().get("RANK") == str(rank):
                    return process.pid
        time.sleep(0.5)
    raise AssertionError(f"no worker with RANK={rank}")


@pytest.mark.parametrize("launcher, victim, signal_number", [
    ("torchrun", 1, signal.SIGKILL),   # the common case: the launcher SIGTERMs the survivor at once
    ("deepspeed", 1, signal.SIGKILL),  # DeepSpeed's launcher does the same (terminate, then kill after 30 s)
    ("torchrun", 0, signal.SIGTERM),   # a rank told to stop says where it stopped
])
def test_a_rank_ended_by_its_launcher_says_where_it_stopped_and_how_to_resume(prepared_tiny, tmp_path, launcher,
                                                                               victim, signal_number):
    import psutil

    job = single_node_job(prepared_tiny, tmp_path, launcher)
    workers = []
    try:
        wait_until_training(tmp_path / "run", [job])
        deadline = time.monotonic() + 60
        while CheckpointDir(tmp_path / "run" / "checkpoints", 3).latest() is None:  # one to resume from
            assert time.monotonic() < deadline and job.poll() is None, "no checkpoint written"
            time.sleep(0.2)
        workers = [worker_rank(job, rank) for rank in (0, 1)]
        os.kill(workers[victim], signal_number)
        job.wait(timeout=90)
    finally:
        for pid in [job.pid, *workers]:  # the launcher puts its workers in a process group of their own
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).kill()
        job.wait()
    output = (tmp_path / "job.log").read_text()
    assert job.returncode != 0
    stopped = re.search(r"dist-s2s: error: rank 0 (stopped by SIGTERM|lost contact with another rank) at step (\d+)"
                        r".*Resume with --train\.resume=true \(latest checkpoint: (.*)\)$", output, re.MULTILINE)
    assert stopped, output[-8000:]
    if signal_number == signal.SIGTERM:
        assert stopped.group(1) == "stopped by SIGTERM"
    latest = CheckpointDir(tmp_path / "run" / "checkpoints", 3).latest()
    assert stopped.group(3) == str(latest) and int(stopped.group(2)) > int(latest.stem.split("-")[1])


@pytest.mark.parametrize("layout", [("--parallel.stages=2", "--parallel.schedule=1f1b", "--parallel.micro_batches=2"),
                                    WAVEFRONT], ids=["1f1b", "wavefront"])
def test_a_pipeline_stops_early_on_every_rank_at_the_single_device_step_keeping_the_same_best(
        layout, prepared_tiny, tmp_path):
    """A rate too small to change any weight, so validation perplexity never improves on the first checkpoint's:
    with patience 2, every rank stops after step 3 (rank 0 decides, the others follow its broadcast), the best
    being step 1's checkpoint, whose stage parts rotation spares, as on one device."""
    stopping = ("--train.max_steps=12", "--train.checkpoint_every=1", "--train.valid_every=1",
                "--train.keep_checkpoints=1", "--train.keep_best=true", "--train.early_stop_patience=2",
                "--optim.lr=1e-30")
    one_device = train(tiny_config(tmp_path, *run_overrides(prepared_tiny, tmp_path / "single", *stopping)))
    output = succeeded(torchrun(prepared_tiny, tmp_path, 2, tmp_path / "run", *layout, *stopping))
    assert one_device["step"] == 3 and one_device["stopped_early"]
    assert "early stop at step 3: valid ppl has not improved" in output and "trained to step 3" in output
    index = json.loads((tmp_path / "run" / "checkpoints" / "index.json").read_text())
    single = json.loads((tmp_path / "single" / "checkpoints" / "index.json").read_text())
    assert index["best"]["step"] == single["best"]["step"] == 1
    assert [e["step"] for e in index["evaluations"]] == [1, 2, 3]
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step-*")) == [
        "step-00000001.pt", "step-00000001.stage-0.pt", "step-00000001.stage-1.pt",
        "step-00000003.pt", "step-00000003.stage-0.pt", "step-00000003.stage-1.pt"]
    assert largest_difference(weights_at(tmp_path / "run", 1), weights_at(tmp_path / "single", 1)) < 1e-5
