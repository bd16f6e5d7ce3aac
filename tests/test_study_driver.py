"""The reproduction study's driver (study/reproduce.py) without training anything: the plan it loads (rows
compared with each other train the same epochs; a plan naming a row it never trains is refused in one line) and
how it schedules trainings side by side."""

from __future__ import annotations

import importlib.util
import os
import sys
import threading
import time

import pytest
from conftest import REPO

from dist_s2s.config import load_config

spec = importlib.util.spec_from_file_location("study_reproduce", REPO / "study" / "reproduce.py")
reproduce = sys.modules["study_reproduce"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(reproduce)

TRAINED = REPO / "configs" / "experiments" / "trained" / "study.yaml"


def epochs(study, row: str) -> float:
    return load_config(study.config(row), []).optim.epochs


def test_rows_compared_with_each_other_have_the_same_epochs():
    study = reproduce.Study.load(TRAINED)
    for forward, reversed_ in study.reversal_pairs:  # claim 1, at each depth
        assert epochs(study, forward) == epochs(study, reversed_)
        assert not load_config(study.config(forward), []).data.reverse_source
        assert load_config(study.config(reversed_), []).data.reverse_source
    assert len({epochs(study, row) for row in study.depth_rows}) == 1  # claim 2: a deeper model gets the same epochs
    assert [load_config(study.config(r), []).model.num_layers for r in study.depth_rows] == [1, 2, 4]


def test_every_row_the_plan_compares_is_trained_and_superseded_rows_are_not():
    study = reproduce.Study.load(TRAINED)
    compared = {*study.depth_rows, *(row for pair in study.reversal_pairs for row in pair), study.reference}
    assert compared <= set(study.rows)
    assert not set(study.superseded) & set(study.rows)


def write_plan(folder, rows: list[str], extra: str = "") -> object:
    """A study.yaml over `rows`, the first one the depth row and the rescoring's first pass, plus `extra`."""
    plan = folder / "study.yaml"
    plan.write_text(f"run_dir: runs/x\nrows: [{', '.join(rows)}]\ndepth_rows: [{rows[0]}]\n{extra}"
                    "ensemble_seeds: []\nsplits: [test2016]\nbeam_sweep: {beams: [12], splits: []}\n"
                    f"rescore: {{first_pass: {rows[0]}, rescorer: best}}\n")
    return plan


def test_a_compared_row_missing_from_the_rows_is_refused_in_one_line(tmp_path):
    for row in ("reversed-1layer", "forward-1layer"):
        (tmp_path / f"{row}.yaml").write_text("model: {num_layers: 1}\n")
    plan = write_plan(tmp_path, ["reversed-1layer", "forward-1layer"],
                      "reversal_pairs: [[forward-1layer, reversed-4layer]]\n")
    with pytest.raises(SystemExit, match=r"row reversed-4layer is compared but not in rows"):
        reproduce.Study.load(plan)


def test_a_row_without_its_config_is_refused_in_one_line(tmp_path):
    plan = write_plan(tmp_path, ["reversed-1layer"])
    with pytest.raises(SystemExit, match=r"row reversed-1layer has no config .*reversed-1layer.yaml"):
        reproduce.Study.load(plan)


class RecordingRunner(reproduce.Runner):
    """A runner whose trainings only record when they ran and on how many threads; `failing` fails."""

    def __init__(self, study, failing: str | None = None):
        super().__init__(study, [])
        self.failing, self.started, self.running, self.most_at_once = failing, [], 0, 0
        self.count = threading.Lock()

    def train(self, row, seed=None, threads=None):
        with self.count:
            self.started.append((row, threads))
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        time.sleep(0.2 if row != self.failing else 0.05)
        with self.count:
            self.running -= 1
        if row == self.failing:
            raise SystemExit(f"failed: {row}")
        return {"row": row, "seed": seed}


def small_study(tmp_path):
    return reproduce.Study(folder=tmp_path, run_dir=tmp_path / "study", rows=[], depth_rows=[], ensemble_seeds=[],
                           splits=[], beam_sweep=reproduce.BeamSweep([12], []),
                           rescore=reproduce.Rescoring("a", "b"))


def test_side_by_side_trainings_share_the_cores_and_keep_the_plans_order(tmp_path):
    runner = RecordingRunner(small_study(tmp_path))
    done = runner.train_all([("a", None), ("b", None), ("c", 2), ("d", None)], parallel=2)
    assert [d["row"] for d in done] == ["a", "b", "c", "d"] and done[2]["seed"] == 2
    assert runner.most_at_once == 2
    assert {threads for _, threads in runner.started} == {max(1, (os.cpu_count() or 2) // 2)}
    one_at_a_time = RecordingRunner(small_study(tmp_path))
    one_at_a_time.train_all([("a", None), ("b", None)], parallel=1)
    assert one_at_a_time.most_at_once == 1 and {t for _, t in one_at_a_time.started} == {None}  # every core


def test_a_failed_training_stops_the_study_before_the_trainings_still_waiting(tmp_path):
    runner = RecordingRunner(small_study(tmp_path), failing="a")
    with pytest.raises(SystemExit, match="failed: a"):
        runner.train_all([("a", None), ("b", None), ("c", None), ("d", None), ("e", None)], parallel=2)
    assert "e" not in [row for row, _ in runner.started], "queued trainings are cancelled, not run for hours"
