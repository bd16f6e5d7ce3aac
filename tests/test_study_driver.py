"""The reproduction study's driver (study/reproduce.py) without training anything: the plan it loads (rows
compared with each other train the same epochs; a plan naming a row it never trains is refused in one line) and
how it schedules its steps side by side."""

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


class Recorder:
    """Steps that only record when they ran: each sleeps `seconds[name]` (default 0.1); `failing` fails."""

    def __init__(self, seconds: dict[str, float] | None = None, failing: str | None = None):
        self.seconds, self.failing = seconds or {}, failing
        self.started, self.ended, self.running, self.most_at_once = [], [], 0, 0
        self.count = threading.Lock()

    def step(self, name: str):
        def run():
            with self.count:
                self.started.append(name)
                self.running += 1
                self.most_at_once = max(self.most_at_once, self.running)
            time.sleep(self.seconds.get(name, 0.1))
            with self.count:
                self.running -= 1
                self.ended.append(name)
            if name == self.failing:
                raise SystemExit(f"failed: {name}")
            return name
        return run


def test_steps_run_side_by_side_in_the_plans_order():
    recorder = Recorder()
    with reproduce.Steps(2) as steps:
        done = [steps.add(recorder.step(name)) for name in "abcd"]
    assert [d.result() for d in done] == list("abcd")
    assert recorder.started == list("abcd") and recorder.most_at_once == 2
    one_at_a_time = Recorder()
    with reproduce.Steps(1) as steps:
        for name in "ab":
            steps.add(one_at_a_time.step(name))
    assert one_at_a_time.most_at_once == 1


def test_a_step_waiting_for_a_training_leaves_its_worker_to_the_steps_that_can_run():
    recorder = Recorder({"train": 0.6})
    with reproduce.Steps(2) as steps:
        trained = steps.add(recorder.step("train"))
        steps.add(recorder.step("evaluate the new row"), needs=[trained])
        for name in ("evaluate row 1", "evaluate row 2", "evaluate row 3"):
            steps.add(recorder.step(name))
    assert recorder.started.index("evaluate the new row") > recorder.ended.index("train")
    assert recorder.ended[:3] == ["evaluate row 1", "evaluate row 2", "evaluate row 3"], \
        "the evaluations that needed nothing ran while the training did"


def test_a_step_added_twice_under_one_key_runs_once():
    recorder = Recorder()
    with reproduce.Steps(2) as steps:
        first = steps.add(recorder.step("reference|test2016|beam12"), key="reference|test2016|beam12")
        again = steps.add(recorder.step("reference|test2016|beam12"), key="reference|test2016|beam12")
    assert first is again and recorder.started == ["reference|test2016|beam12"]


def test_a_failed_step_stops_the_study_before_the_steps_still_waiting():
    recorder = Recorder({"a": 0.05, "b": 0.3}, failing="a")
    with pytest.raises(SystemExit, match="failed: a"), reproduce.Steps(2) as steps:
        for name in "abcde":
            steps.add(recorder.step(name))
    assert recorder.started == ["a", "b"], "what runs finishes; what waits is not started (not run for hours)"
    assert recorder.ended == ["a", "b"]


def test_side_by_side_commands_share_the_cores(tmp_path):
    study = reproduce.Study(folder=tmp_path, run_dir=tmp_path / "study", rows=[], depth_rows=[], ensemble_seeds=[],
                            splits=[], beam_sweep=reproduce.BeamSweep([12], []), rescore=reproduce.Rescoring("a", "b"))
    assert reproduce.Runner(study, [], parallel=2).threads == max(1, (os.cpu_count() or 2) // 2)
    assert reproduce.Runner(study, [], parallel=1).threads is None  # every core
