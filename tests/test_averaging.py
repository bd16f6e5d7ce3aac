"""`dist-s2s average`: the element-wise mean of checkpoints of one model, in either layout, and nothing else."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import REPO, SHARED_DATA, tiny_config

from dist_s2s.cli import main
from dist_s2s.errors import UserError
from dist_s2s.parallel.stage_checkpoint import convert
from dist_s2s.train.averaging import average
from dist_s2s.train.checkpoint import CheckpointDir, load_checkpoint, model_weights, write_file
from dist_s2s.train.trainer import train


@pytest.fixture(scope="module")
def run(prepared_tiny, tmp_path_factory) -> tuple[Path, list[Path]]:
    """6 tiny steps, a checkpoint every 2: the run directory and its three checkpoints, oldest first."""
    directory = tmp_path_factory.mktemp("averaging")
    train(tiny_config(directory, f"--data.out_dir={prepared_tiny.data.out_dir}", "--train.max_steps=6",
                      "--train.checkpoint_every=2", "--train.valid_every=6"))
    return directory / "run", CheckpointDir(directory / "run" / "checkpoints", 3).listed()


def weights(path: Path) -> dict[str, torch.Tensor]:
    return model_weights(path, load_checkpoint(path))


def test_two_identical_checkpoints_average_to_themselves(run, tmp_path):
    _, (first, *_) = run
    average([first, first], tmp_path / "same.pt")
    original, averaged = weights(first), weights(tmp_path / "same.pt")
    assert original.keys() == averaged.keys()
    assert all(torch.equal(original[name], averaged[name]) for name in original)


def test_the_average_is_the_element_wise_mean_in_fp32_and_holds_no_training_state(run, tmp_path):
    _, checkpoints = run
    average(checkpoints, tmp_path / "mean.pt")
    each = [weights(path) for path in checkpoints]
    mean = weights(tmp_path / "mean.pt")
    for name, tensor in mean.items():
        assert torch.equal(tensor, (each[0][name] + each[1][name] + each[2][name]) / 3)
    state = load_checkpoint(tmp_path / "mean.pt")
    assert [source["step"] for source in state["averaged_from"]] == [2, 4, 6]
    assert "optimizer" not in state and "loader" not in state, "for decoding: never resumed from"


def test_pipeline_stage_checkpoints_average_like_the_single_device_files(run, tmp_path):
    _, checkpoints = run
    staged = [convert(path, tmp_path / "staged" / path.name, stages=2) for path in checkpoints]
    average(staged, tmp_path / "from-stages.pt")
    average(checkpoints, tmp_path / "from-files.pt")
    from_stages, from_files = weights(tmp_path / "from-stages.pt"), weights(tmp_path / "from-files.pt")
    assert all(torch.equal(from_stages[name], from_files[name]) for name in from_files)


def test_checkpoints_of_another_model_vocabulary_or_layout_are_refused_in_one_line(run, tmp_path):
    _, (first, second, _) = run
    state = load_checkpoint(second)
    for key, value in (("model.hidden_size", 32), ("vocab.tgt_sha256", "0" * 64)):
        other = tmp_path / f"other-{key}.pt"
        write_file(other, {**state, "compat": {**state["compat"], key: value}})
        with pytest.raises(UserError, match=rf"cannot average .*other-{key}\.pt with .*: {key} is") as error:
            average([first, other], tmp_path / "never.pt")
        assert "\n" not in str(error.value)
    staged = convert(second, tmp_path / "staged.pt", stages=2)
    with pytest.raises(UserError, match=r"\(2 pipeline stage parts\) with .* \(one file\): convert one layout"):
        average([first, staged], tmp_path / "never.pt")
    with pytest.raises(UserError, match="at least two checkpoints"):
        average([first], tmp_path / "never.pt")
    assert not (tmp_path / "never.pt").exists()


def test_cli_averages_the_last_n_of_a_run_and_the_result_translates(run, tmp_path, capsys):
    run_dir, checkpoints = run
    arguments = ["--config", str(REPO / "configs" / "tiny.yaml"), f"--data.root={SHARED_DATA}",
                 f"--train.run_dir={run_dir}"]
    assert main(["average", *arguments, "--last", "2", "--output", str(tmp_path / "last2.pt")]) == 0
    assert "the mean of 2 checkpoints (steps 4, 6)" in capsys.readouterr().out
    assert main(["average", *arguments, "--last", "5", "--output", str(tmp_path / "x.pt")]) != 0
    assert "lists 3 checkpoints, fewer than --last 5" in capsys.readouterr().err
    (tmp_path / "in.en").write_text("A man is sleeping .\n")
    data_dir = load_checkpoint(checkpoints[0])["config"]["data"]["out_dir"]
    assert main(["translate", *arguments, f"--data.out_dir={data_dir}", "--checkpoint", str(tmp_path / "last2.pt"),
                 "--input", str(tmp_path / "in.en"), "--output", str(tmp_path / "out.fr")]) == 0
    assert len((tmp_path / "out.fr").read_text().splitlines()) == 1
