"""The reproduction study's plan as study/reproduce.py loads it: rows compared with each other train the same
number of epochs, and a plan that names a row it never trains is refused in one line."""

from __future__ import annotations

import importlib.util
import sys

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


def test_a_compared_row_missing_from_the_rows_is_refused_in_one_line(tmp_path):
    for row in ("reversed-1layer", "forward-1layer"):
        (tmp_path / f"{row}.yaml").write_text("model: {num_layers: 1}\n")
    plan = tmp_path / "study.yaml"
    plan.write_text("run_dir: runs/x\nrows: [reversed-1layer, forward-1layer]\ndepth_rows: [reversed-1layer]\n"
                    "reversal_pairs: [[forward-1layer, reversed-4layer]]\nensemble_seeds: []\nsplits: [test2016]\n"
                    "beam_sweep: {beams: [12], splits: []}\nrescore: {first_pass: forward-1layer, rescorer: best}\n")
    with pytest.raises(SystemExit, match=r"row reversed-4layer is compared but not in rows"):
        reproduce.Study.load(plan)


def test_a_row_without_its_config_is_refused_in_one_line(tmp_path):
    plan = tmp_path / "study.yaml"
    plan.write_text("run_dir: runs/x\nrows: [reversed-1layer]\ndepth_rows: [reversed-1layer]\nensemble_seeds: []\n"
                    "splits: [test2016]\nbeam_sweep: {beams: [12], splits: []}\n"
                    "rescore: {first_pass: reversed-1layer, rescorer: best}\n")
    with pytest.raises(SystemExit, match=r"row reversed-1layer has no config .*reversed-1layer.yaml"):
        reproduce.Study.load(plan)
