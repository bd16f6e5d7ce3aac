"""The single-device trainer on the tiny config: learns, resumes bit-exactly, tracks, refuses bad checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import ADAM, free_port, tiny_config

from dist_s2s.errors import UserError
from dist_s2s.train.checkpoint import CheckpointDir, load_checkpoint
from dist_s2s.train.trainer import train


def config_for(prepared, run_dir: Path, *overrides: str):
    """The session's prepared tiny data, a fresh run directory."""
    return tiny_config(run_dir.parent, f"--data.out_dir={prepared.data.out_dir}", f"--train.run_dir={run_dir}",
                       "--train.log_every=2", "--train.valid_every=1000", *overrides)


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(CheckpointDir(run_dir / "checkpoints", 3).latest())["model"]


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(prepared_tiny, tmp_path_factory):
    """One 40-step tiny run, shared by the tests that only read it."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    summary = train(config_for(prepared_tiny, run_dir, "--train.max_steps=40", "--train.valid_every=20",
                               "--train.checkpoint_every=10", "--train.keep_checkpoints=2"))
    return run_dir, summary


def test_training_lowers_the_loss(trained):
    run_dir, summary = trained
    # Per token: the loss per sentence swings with the lengths of each bucketed batch.
    perplexities = [m["train/ppl"] for m in metrics(run_dir) if "train/ppl" in m]
    assert sum(perplexities[-5:]) / 5 < 0.6 * sum(perplexities[:5]) / 5
    valid = [m["valid/ppl"] for m in metrics(run_dir) if "valid/ppl" in m]
    assert len(valid) == 2 and valid[1] < valid[0] < 500


def test_log_records_carry_the_paper_quantities(trained):
    record = next(m for m in metrics(trained[0]) if "train/loss" in m)
    assert {"train/loss", "train/ppl", "train/lr", "train/grad_norm", "train/words_per_sec"} <= set(record)
    assert record["train/lr"] == 0.7


def test_only_the_last_checkpoints_are_kept(trained):
    files = sorted(p.name for p in (trained[0] / "checkpoints").glob("*.pt"))
    assert files == ["step-00000030.pt", "step-00000040.pt"]


def test_the_run_is_in_mlflow_with_params_metrics_and_artifacts(trained):
    from mlflow.tracking import MlflowClient

    run_dir, summary = trained
    client = MlflowClient(summary["tracking_uri"])
    run = client.get_run(summary["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["model.hidden_size"] == "16" and run.data.params["train.max_steps"] == "40"
    expected = {"train/loss", "train/ppl", "train/lr", "train/grad_norm", "train/words_per_sec", "valid/ppl"}
    assert expected <= set(run.data.metrics)
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) == 20
    artifacts = {a.path for folder in ("inputs", "plots", "checkpoints")
                 for a in client.list_artifacts(run.info.run_id, folder)}
    assert {"inputs/config.yaml", "inputs/manifest.json", "inputs/vocab.en.txt", "plots/loss_curve.png",
            "checkpoints/step-00000040.pt"} <= artifacts


@pytest.mark.parametrize("model", [("--model.dropout=0.0",), ("--model.dropout=0.3", "--model.attention=luong"),
                                   ADAM],
                         ids=["paper", "dropout-attention", "adam"])
def test_a_resumed_run_ends_bit_identical_to_an_uninterrupted_one(prepared_tiny, tmp_path, model):
    """With dropout too: a step's masks come from (seed, step, sentence, position), not a generator's stream.
    With Adam: its moments and step count come back from the checkpoint."""
    straight = tmp_path / "straight"
    train(config_for(prepared_tiny, straight, "--train.max_steps=12", "--train.checkpoint_every=100", *model))
    stopped = tmp_path / "stopped"
    train(config_for(prepared_tiny, stopped, "--train.max_steps=5", "--train.checkpoint_every=100", *model))
    train(config_for(prepared_tiny, stopped, "--train.max_steps=12", "--train.checkpoint_every=100",
                     "--train.resume=true", *model))
    expected, resumed = final_weights(straight), final_weights(stopped)
    assert expected.keys() == resumed.keys()
    assert all(torch.equal(expected[k], resumed[k]) for k in expected)
    a = load_checkpoint(CheckpointDir(straight / "checkpoints", 3).latest())
    b = load_checkpoint(CheckpointDir(stopped / "checkpoints", 3).latest())
    assert a["loader"] == b["loader"], "the data cursor agrees too"
    assert [m["step"] for m in metrics(stopped) if "train/loss" in m] == [2, 4, 5, 6, 8, 10, 12]


def test_adam_resumes_from_its_checkpointed_moments_not_from_fresh_ones(prepared_tiny, tmp_path):
    adam = (*ADAM, "--train.checkpoint_every=100")
    stopped = tmp_path / "stopped"
    train(config_for(prepared_tiny, stopped, "--train.max_steps=5", *adam))
    saved = load_checkpoint(CheckpointDir(stopped / "checkpoints", 3).latest())
    assert saved["optimizer"]["kind"] == "adam" and saved["optimizer"]["step"] == 5
    assert saved["optimizer"]["exp_avg"].keys() == saved["model"].keys()  # unsharded names, like the weights
    assert all(saved["optimizer"]["exp_avg_sq"][k].shape == saved["model"][k].shape for k in saved["model"])
    forgetful = tmp_path / "forgetful"  # the same checkpoint with the moments dropped
    directory = CheckpointDir(forgetful / "checkpoints", 3)
    directory.save(5, {**{k: v for k, v in saved.items() if k not in ("format", "step")},
                       "optimizer": {"kind": "adam", "step": None}})
    for run_dir in (stopped, forgetful):
        train(config_for(prepared_tiny, run_dir, "--train.max_steps=8", "--train.resume=true", *adam))
    remembered, forgot = final_weights(stopped), final_weights(forgetful)
    assert not all(torch.equal(remembered[k], forgot[k]) for k in remembered)


def test_a_checkpoint_resumes_only_with_the_optimizer_it_was_trained_with(trained, prepared_tiny, tmp_path):
    import shutil

    run_dir = tmp_path / "copy"
    shutil.copytree(trained[0], run_dir)
    with pytest.raises(UserError, match=r"step-00000040\.pt was trained with optim.optimizer=sgd, the config gives "
                                        "optim.optimizer=adam"):
        train(config_for(prepared_tiny, run_dir, "--train.max_steps=50", "--train.resume=true",
                         "--optim.optimizer=adam"))


def test_a_run_directory_with_checkpoints_needs_resume(trained, prepared_tiny):
    with pytest.raises(UserError, match="already has checkpoints .* --train.resume=true"):
        train(config_for(prepared_tiny, trained[0], "--train.max_steps=50"))


def test_a_checkpoint_whose_bytes_changed_fails_its_recorded_checksum(trained, tmp_path):
    import shutil

    shutil.copytree(trained[0] / "checkpoints", tmp_path / "checkpoints")
    directory = CheckpointDir(tmp_path / "checkpoints", 3)
    latest = directory.latest()
    data = bytearray(latest.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside a tensor: torch.load alone would not notice
    latest.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"step-00000040\.pt is corrupt: its sha256 differs"):
        load_checkpoint(latest, directory.expected_sha256(latest))


def test_a_checkpoint_from_another_model_shape_names_the_mismatch(trained, prepared_tiny, tmp_path):
    import shutil

    run_dir = tmp_path / "copy"
    shutil.copytree(trained[0], run_dir)
    with pytest.raises(UserError, match="trained with model.hidden_size=16, the config gives model.hidden_size=24"):
        train(config_for(prepared_tiny, run_dir, "--train.max_steps=50", "--train.resume=true",
                         "--model.hidden_size=24"))
    with pytest.raises(UserError, match="with model.attention='none', the config gives model.attention='luong'"):
        train(config_for(prepared_tiny, run_dir, "--train.max_steps=50", "--train.resume=true",
                         "--model.attention=luong"))


def test_an_unreachable_tracking_server_does_not_stop_training(prepared_tiny, tmp_path, caplog):
    port = free_port()  # closed again: nothing listens there
    run_dir = tmp_path / "run"
    summary = train(config_for(prepared_tiny, run_dir, "--train.max_steps=4", f"--tracking.uri=http://127.0.0.1:{port}"))
    assert summary["step"] == 4
    logged = metrics(run_dir)
    assert len([m for m in logged if "train/loss" in m]) == 2, "the local record has every metric"
    unsent = [json.loads(line) for line in (run_dir / "unsent-metrics.jsonl").read_text().splitlines()]
    assert unsent == logged, "every record MLflow missed is kept for `dist-s2s sync`"
    messages = [r.getMessage() for r in caplog.records if f"MLflow at http://127.0.0.1:{port}" in r.getMessage()]
    assert len([m for m in messages if " failed (" in m]) == 1, "warned once"
    assert [m for m in messages if "did not reach MLflow" in m] == [
        f"tracking: {len(logged)} metric records did not reach MLflow at http://127.0.0.1:{port}; they are in "
        f"{run_dir / 'unsent-metrics.jsonl'}: `dist-s2s sync` with this run's config sends them"]


def test_train_prepares_missing_data_and_prepares_again_when_the_data_config_changed(ray_local, tmp_path):
    from dist_s2s.data.manifest import load_manifest

    config = tiny_config(tmp_path, "--train.max_steps=1")
    train(config)
    assert load_manifest(Path(config.data.out_dir)).vocab.tgt_size == 500
    changed = tiny_config(tmp_path, "--train.max_steps=1", "--data.tgt_vocab_size=300",
                          f"--train.run_dir={tmp_path / 'run2'}")
    train(changed)
    assert load_manifest(Path(config.data.out_dir)).vocab.tgt_size == 300


def test_a_checkpoints_gpu_rng_states_are_restored_for_the_gpus_this_host_has(monkeypatch):
    from dist_s2s.train import trainer

    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, index: restored.append((int(state[0]), index)))
    trainer.restore_cuda_rng([torch.tensor([7]), torch.tensor([8])])  # saved on a host with 2 GPUs
    assert restored == [(7, 0)]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    trainer.restore_cuda_rng([torch.tensor([7])])  # no IndexError on a host without the GPU
    assert restored == [(7, 0)]


def test_a_process_killed_while_noting_its_step_leaves_the_previous_note_whole(tmp_path, monkeypatch):
    """A restarted attempt reads the last step the failed one noted (`train/steps_repeated`); a kill between
    truncating and writing the note must not leave it empty (it did: the restart ended in a ValueError)."""
    from dist_s2s.train import trainer

    trainer._note_step(tmp_path, 40)

    real_open = open

    def killed_after_truncating(file, mode="r", *args, **kwargs):
        if "w" not in mode:
            return real_open(file, mode, *args, **kwargs)
        real_open(file, "w").close()
        raise KeyboardInterrupt  # stands in for the SIGKILL that lands between truncate and write

    monkeypatch.setattr("builtins.open", killed_after_truncating)  # whichever way the note is written
    monkeypatch.setattr(Path, "write_text", lambda self, *a, **k: killed_after_truncating(self, "w"))
    with pytest.raises(KeyboardInterrupt):
        trainer._note_step(tmp_path, 41)
    monkeypatch.undo()
    assert (tmp_path / trainer.PROGRESS_FILE).read_text() == "40\n"


def test_a_rank_that_never_arrives_before_the_first_step_ends_the_run_in_one_line_naming_start_timeout_s(tmp_path):
    """The set-up's meeting (`Steps.ready`) failing as a lost peer: the tracking run ends FAILED, the steps are
    released, and the error names parallel.start_timeout_s (no step ran, so nothing to resume)."""
    from dist_s2s.train import trainer

    class NeverMet:
        closed = None

        def ready(self):
            raise RuntimeError("[gloo/transport/tcp/pair.cc:534] Timed out waiting 600000ms for recv")

        def lost_contact(self, error):
            return "Timed out" in str(error)

        def close(self, finished=True):
            self.closed = finished

    class Tracker:
        status = None

        def finish(self, status="FINISHED"):
            self.status = status

    steps, tracker = NeverMet(), Tracker()
    config = tiny_config(tmp_path, "--parallel.start_timeout_s=600")
    with pytest.raises(UserError, match=r"lost contact with another rank before the first step \(.*Timed out.*\): "
                                        r"a rank died, or took longer than parallel\.start_timeout_s=600 to set up"):
        trainer._wait_for_every_process(config, steps, tracker)
    assert tracker.status == "FAILED" and steps.closed is False
