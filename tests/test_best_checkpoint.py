"""The best checkpoint by a validation measure, kept beside the latest ones, and early stopping: what they
keep and delete, when they stop, and that a resumed run ranks and stops as the uninterrupted one."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import pytest
import torch
from conftest import REPO, SHARED_DATA, tiny_config

from dist_s2s.cli import main
from dist_s2s.train.best import BestSoFar
from dist_s2s.train.checkpoint import CheckpointDir, load_checkpoint, step_of
from dist_s2s.train.trainer import train


def scored(metric: str, value: float, best: bool):
    return lambda path: {"metric": metric, "value": value, "best": best}


def test_the_best_checkpoint_outlives_rotation_and_goes_when_a_better_one_comes(tmp_path):
    checkpoints = CheckpointDir(tmp_path, keep=2, keep_best=True)
    for step, (value, best) in {1: (9.0, True), 2: (5.0, True), 3: (6.0, False), 4: (7.0, False)}.items():
        checkpoints.save(step, {"model": {"w": torch.zeros(1)}}, evaluate=scored("ppl", value, best))
    assert checkpoints.best() == tmp_path / "step-00000002.pt"
    assert sorted(p.name for p in tmp_path.glob("step-*.pt")) == ["step-00000002.pt", "step-00000003.pt",
                                                                  "step-00000004.pt"]
    assert load_checkpoint(checkpoints.best(), checkpoints.expected_sha256(checkpoints.best()))["step"] == 2
    checkpoints.save(5, {"model": {"w": torch.zeros(1)}}, evaluate=scored("ppl", 4.0, True))
    assert checkpoints.best() == tmp_path / "step-00000005.pt"
    assert sorted(p.name for p in tmp_path.glob("step-*.pt")) == ["step-00000004.pt", "step-00000005.pt"]
    assert [(e["step"], e["value"]) for e in checkpoints.evaluations()] == [(1, 9.0), (2, 5.0), (3, 6.0), (4, 7.0),
                                                                              (5, 4.0)]


def test_a_checkpoints_file_name_gives_back_its_step(tmp_path):
    directory = CheckpointDir(tmp_path, keep=1)
    assert [step_of(directory.path_of(step)) for step in (0, 227, 123_456_789)] == [0, 227, 123_456_789]
    assert step_of(tmp_path / "average-last5.pt") is None


def test_without_keep_best_the_scores_are_listed_but_nothing_is_spared(tmp_path):
    checkpoints = CheckpointDir(tmp_path, keep=1)
    for step, value in ((1, 3.0), (2, 4.0)):
        checkpoints.save(step, {"model": {}}, evaluate=scored("ppl", value, step == 1))
    assert checkpoints.best() is None and [p.name for p in tmp_path.glob("step-*.pt")] == ["step-00000002.pt"]


@pytest.mark.parametrize("metric, values, best_step, since", [
    ("ppl", [9, 7, 8, 7, 6.5, 6.6], 5, 1),  # lower is better; a tie is no improvement
    ("bleu", [1, 3, 2, 3, 2], 2, 3),  # higher is better
])
def test_replaying_the_listed_scores_gives_the_best_and_the_patience_so_far(metric, values, best_step, since):
    replayed = BestSoFar.replay(metric, [{"step": s, "metric": metric, "value": v} for s, v in enumerate(values, 1)])
    assert (replayed.step, replayed.value, replayed.since) == (best_step, values[best_step - 1], since)


SCRIPTED_BLEU = {2: 1.0, 4: 3.0, 6: 2.0, 8: 3.0, 10: 2.5, 12: 9.0}
"""A validation BLEU per checkpoint step: the best at step 4, then three checkpoints without improvement."""


def scripted_bleu(checkpoint: Path) -> float:
    return SCRIPTED_BLEU[int(re.search(r"step-(\d+)", checkpoint.name)[1])]


def run_config(prepared, run_dir: Path, *overrides: str):
    return tiny_config(run_dir.parent, f"--data.out_dir={prepared.data.out_dir}", f"--train.run_dir={run_dir}",
                       "--train.valid_every=1000", "--train.checkpoint_every=2", "--train.keep_checkpoints=1",
                       "--train.keep_best=true", "--train.best_metric=bleu", "--train.early_stop_patience=3",
                       *overrides)


def test_training_stops_after_patience_checkpoints_without_improvement_keeping_the_best(prepared_tiny, tmp_path,
                                                                                         caplog):
    run_dir = tmp_path / "run"
    with caplog.at_level("INFO"):
        summary = train(run_config(prepared_tiny, run_dir, "--train.max_steps=20"), score_bleu=scripted_bleu)
    assert summary["step"] == 10 and summary["stopped_early"]
    assert "early stop at step 10: valid bleu has not improved on 3.00 (step 4) for 3 checkpoints" in caplog.text
    checkpoints = CheckpointDir(run_dir / "checkpoints", 1)
    assert summary["best_checkpoint"] == str(checkpoints.best()) == str(run_dir / "checkpoints" / "step-00000004.pt")
    assert sorted(p.name for p in checkpoints.directory.glob("step-*.pt")) == ["step-00000004.pt", "step-00000010.pt"]
    assert load_checkpoint(checkpoints.best())["step"] == 4


def test_a_resumed_run_keeps_its_best_and_its_patience(prepared_tiny, tmp_path):
    """Stopped at step 6 (the best at 4, one checkpoint without improvement), resumed: it stops at step 10 as the
    uninterrupted run does, with the same best checkpoint and the same weights."""
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    train(run_config(prepared_tiny, straight, "--train.max_steps=20"), score_bleu=scripted_bleu)
    train(run_config(prepared_tiny, stopped, "--train.max_steps=6"), score_bleu=scripted_bleu)
    resumed = train(run_config(prepared_tiny, stopped, "--train.max_steps=20", "--train.resume=true"),
                    score_bleu=scripted_bleu)
    assert resumed["step"] == 10 and resumed["stopped_early"]
    for name in ("step-00000004.pt", "step-00000010.pt"):
        a, b = (load_checkpoint(run / "checkpoints" / name)["model"] for run in (straight, stopped))
        assert all(torch.equal(a[key], b[key]) for key in a)
    index = [json.loads((run / "checkpoints" / "index.json").read_text()) for run in (straight, stopped)]
    assert index[0]["best"]["step"] == index[1]["best"]["step"] == 4
    assert index[0]["evaluations"] == index[1]["evaluations"]


def test_the_cli_ranks_by_decoded_validation_bleu_and_evaluates_the_best(prepared_tiny, tmp_path):
    """`train` decodes the validation split at train.best_beam at each checkpoint (sacreBLEU); `evaluate
    --checkpoint best` reads the one the index names."""
    arguments = ["--config", str(REPO / "configs" / "tiny.yaml"), f"--data.root={SHARED_DATA}",
                 f"--data.out_dir={prepared_tiny.data.out_dir}", f"--train.run_dir={tmp_path / 'run'}"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["train", *arguments, "--train.max_steps=4", "--train.checkpoint_every=2",
                     "--train.keep_best=true", "--train.best_metric=bleu", "--train.best_beam=1"]) == 0
        assert main(["evaluate", *arguments, "--checkpoint", "best", "--split", "valid", "--beam", "1",
                     "--output", str(tmp_path / "scores.json")]) == 0
    index = json.loads((tmp_path / "run" / "checkpoints" / "index.json").read_text())
    assert [(e["step"], e["metric"]) for e in index["evaluations"]] == [(2, "bleu"), (4, "bleu")]
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert scores["checkpoints"] == [str(tmp_path / "run" / "checkpoints" / index["best"]["file"])]
    assert scores["bleu"] == index["best"]["value"], "the same decoding: beam 1 on the validation split"
    assert "best checkpoint by valid bleu" in printed.getvalue()


def test_checkpoint_best_without_keep_best_says_how_to_get_one(prepared_tiny, tmp_path, capsys):
    arguments = ["--config", str(REPO / "configs" / "tiny.yaml"), f"--data.root={SHARED_DATA}",
                 f"--data.out_dir={prepared_tiny.data.out_dir}", f"--train.run_dir={tmp_path / 'run'}"]
    assert main(["evaluate", *arguments, "--checkpoint", "best"]) == 2
    assert "--checkpoint best: " in capsys.readouterr().err
