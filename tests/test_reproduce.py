"""The reproduction study's driver (study/reproduce.py) end to end on tiny models."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO, SHARED_DATA

pytestmark = pytest.mark.launcher

ROWS = {  # the study's row shapes, on tiny models, reading the session's prepared data
    "reversed-1layer": "model: {num_layers: 1}\ndata: {out_dir: REVERSED}\n",
    "reversed-2layer": "model: {num_layers: 2}\ndata: {out_dir: REVERSED}\n",
    "forward-1layer": "model: {num_layers: 1}\ndata: {reverse_source: false, out_dir: FORWARD}\n",
}


def test_the_study_driver_trains_selects_on_valid_evaluates_ensembles_and_rescores(prepared_tiny, prepared_tiny_forward,
                                                                                    tmp_path):
    forward, reversed_ = prepared_tiny_forward.data.out_dir, prepared_tiny.data.out_dir
    for row, body in ROWS.items():
        body = body.replace("FORWARD", forward).replace("REVERSED", reversed_)
        (tmp_path / f"{row}.yaml").write_text(f"base: {REPO / 'configs' / 'tiny.yaml'}\n{body}")
    (tmp_path / "study.yaml").write_text(
        f"run_dir: {tmp_path / 'study'}\nrows: [reversed-1layer, reversed-2layer, forward-1layer]\n"
        "depth_rows: [reversed-1layer, reversed-2layer]\nensemble_seeds: [2]\nsplits: [test2016]\n"
        "beam_sweep: {beams: [1, 2], splits: [test2016]}\n"
        "rescore: {first_pass: forward-1layer, rescorer: best, nbest: 3, weight: 0.5, splits: [test2016]}\n")
    command = [sys.executable, str(REPO / "study" / "reproduce.py"), "--study", str(tmp_path / "study.yaml"),
               "--set", f"data.root={SHARED_DATA}", "--set", "train.max_steps=12", "--set", "train.valid_every=6",
               "--set", "train.checkpoint_every=6", "--parallel", "2"]
    first = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
    results = json.loads((tmp_path / "study" / "study.json").read_text())

    trained = results["trained"]
    trainings = [c for c in results["commands"] if c["command"].startswith("dist-s2s train")]
    assert len(trainings) == 4 and {c["threads"] for c in trainings} == {max(1, (os.cpu_count() or 2) // 2)}, \
        "two trainings side by side, each on half the cores"
    assert set(trained) == {"reversed-1layer", "reversed-2layer", "forward-1layer", f"{results['ensemble_row']}-seed2"}
    depth = {row: trained[row]["valid_ppl"] for row in ("reversed-1layer", "reversed-2layer")}
    assert results["ensemble_row"] == min(depth, key=depth.get), "the ensemble's row is chosen on valid ppl"
    evaluated, best = results["evaluated"], results["ensemble_row"]
    assert set(evaluated) == {f"{label}|test2016|beam2"  # every row and the ensemble at the largest beam ...
                              for label in ("reversed-1layer", "reversed-2layer", "forward-1layer", "ensemble")} \
        | {f"{best}|test2016|beam1", "ensemble|test2016|beam1"}  # ... the smaller beams for the best and the ensemble
    assert all(e["perplexity"] > 1 and 0 <= e["bleu"] <= 100 and e["mlflow_run_id"] for e in evaluated.values())
    assert all(0 <= e["phrase_grouping"]["nearest_same_meaning"] <= 1 for e in evaluated.values())
    assert evaluated["ensemble|test2016|beam2"]["members"] == 2
    rescored = results["rescored"]["test2016"]
    assert {"first_pass", "rescored", "signature"} <= rescored.keys() and rescored["sentences"] == 1000
    assert (rescored["first_pass_row"], rescored["rescorer_row"]) == ("forward-1layer", best)

    import mlflow  # every training and evaluation is a run in the study's one store

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'study' / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    ids = {r.info.run_id for r in runs}
    assert {t["mlflow_run_id"] for t in trained.values()} <= ids
    assert {e["mlflow_run_id"] for e in evaluated.values()} <= ids

    again = subprocess.run(command, capture_output=True, text=True, timeout=300)  # finished steps are skipped
    assert again.returncode == 0 and "$ dist-s2s" not in again.stdout

    report = subprocess.run([sys.executable, str(REPO / "study" / "report.py"), "--study-dir",
                             str(tmp_path / "study"), "--out", str(tmp_path / "report")],
                            capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-3000:]
    tables = (tmp_path / "report" / "tables.md").read_text()
    for heading in ("Claim 1", "Claim 2", "Claim 3", "Claim 4", "Claim 5", "Claim 6", "Claim 7", "MLflow runs"):
        assert f"## {heading}" in tables
    assert trained["reversed-2layer"]["mlflow_run_id"] in tables
    forward, reversed_1 = evaluated["forward-1layer|test2016|beam2"], evaluated["reversed-1layer|test2016|beam2"]
    assert f"| test2016 | {forward['perplexity']:.2f} | {reversed_1['perplexity']:.2f} |" in tables, \
        "numbers read back from MLflow equal the evaluations'"
    ensemble = evaluated["ensemble|test2016|beam2"]
    assert f"| ensemble | {evaluated['ensemble|test2016|beam1']['bleu']:.2f} | {ensemble['bleu']:.2f} |" in tables
    assert "| **not judged** |" in tables, "no seed decoded alone: no spread to judge against"
    assert json.loads((tmp_path / "report" / "snapshot.json").read_text())["study"] == results
    for plot in ("bleu_vs_beam", "valid_ppl", "ppl_by_depth", "bleu_by_length", "bleu_by_rarity", "sentence_pca"):
        assert (tmp_path / "report" / f"{plot}.png").read_bytes()[:4] == b"\x89PNG", plot
