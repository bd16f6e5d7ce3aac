"""The reproduction study's verdicts (study/report.py) follow docs/reproduction/plan.md's rules, on made-up
studies where the answer is known: one that reproduces every claim, then one number changed at a time."""

from __future__ import annotations

import copy
import importlib.util
import json
import subprocess
import sys

import pytest
from conftest import REPO

spec = importlib.util.spec_from_file_location("study_report", REPO / "study" / "report.py")
report = sys.modules["study_report"] = importlib.util.module_from_spec(spec)  # dataclasses look it up there
spec.loader.exec_module(report)

REFERENCE = "reversed-2layer"
SEEDS = [2, 3, 4, 5]
SIGNATURE = {"bleu": "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0"}


def bins(values: list[float], edges: list[float]) -> list[dict]:
    return [{"low": low, "high": high, "sentences": 50, "bleu": value}
            for value, low, high in zip(values, edges, [*edges[1:], float("inf")])]


def paper_like_study() -> dict:
    """Reversal −20% ppl at every depth, −10% ppl per added layer, seeds within 0.2 ppl / 0.4 BLEU, beam 2 at 80%
    of the gain, an ensemble above its best member, flat length bins, rarest words worst, vectors that group by
    meaning, rescoring +1 BLEU."""
    snapshot = {"study": {"trained": {}, "evaluated": {}, "ensemble_row": REFERENCE, "finished": True, "layout": {
        "rows": [f"{o}-{n}layer" for o in ("reversed", "forward") for n in (1, 2, 4)],
        "depth_rows": [f"reversed-{n}layer" for n in (1, 2, 4)], "seeds": SEEDS,
        "long_rows": ["news", "news-forward"], "long_splits": ["newstest2013"]}}, "runs": {}}

    def train(name: str, layers: int, reversed_source: bool, valid_ppl: float, epochs: float = 12.0) -> None:
        run_id = f"train-{name}"
        snapshot["study"]["trained"][name] = {"mlflow_run_id": run_id, "valid_ppl": valid_ppl}
        snapshot["runs"][run_id] = {"params": {"model.num_layers": str(layers), "optim.epochs": str(epochs),
                                               "data.reverse_source": str(reversed_source)},
                                    "valid_ppl": [[100, valid_ppl * 2], [200, valid_ppl]]}

    def evaluate(label: str, split: str, beam: int, *, bleu: float, ppl: float, nearest: float = 0.8,
                 apart: float = 0.9) -> None:
        run_id = f"eval-{label}-{split}-{beam}"
        snapshot["study"]["evaluated"][f"{label}|{split}|beam{beam}"] = {
            "mlflow_run_id": run_id, "label": label, "split": split, "beam": beam, "signature": SIGNATURE,
            "report_dir": "/nowhere", "bleu_by_length": bins([bleu * f for f in (0.95, 1.0, 1.05, 0.9, 0.6)],
                                                             [0, 8, 17, 26, 35]),
            "bleu_by_rarity": bins([bleu * f for f in (1.4, 1.2, 1.0, 0.9, 0.8, 0.5)], [0, 10, 20, 30, 40, 50])}
        snapshot["runs"][run_id] = {"metrics": {
            f"{split}/bleu": bleu, f"{split}/ppl": ppl, "phrases/nearest_same_meaning": nearest,
            "phrases/between_over_within": 1.5, "phrases/order_told_apart": apart, "phrases/order_pair_cosine": 0.6}}

    for layers, ppl in ((1, 12.0), (2, 10.8), (4, 9.7)):
        train(f"reversed-{layers}layer", layers, True, ppl * 0.9)
        train(f"forward-{layers}layer", layers, False, ppl * 1.25 * 0.9)
        evaluate(f"reversed-{layers}layer", "test2016", 12, bleu=20 + layers, ppl=ppl)
        evaluate(f"forward-{layers}layer", "test2016", 12, bleu=16 + layers, ppl=ppl * 1.25)
    for offset, seed in enumerate(SEEDS, 1):
        train(f"{REFERENCE}-seed{seed}", 2, True, 9.7)
        evaluate(f"{REFERENCE}-seed{seed}", "test2016", 12, bleu=22 - 0.1 * offset, ppl=10.8 + 0.05 * offset,
                 nearest=0.75 + 0.01 * offset)
    evaluate("ensemble", "test2016", 12, bleu=24.0, ppl=10.0)
    evaluate(f"{REFERENCE}-average5", "test2016", 12, bleu=22.1, ppl=10.7)
    for label, bleu in ((REFERENCE, (20.0, 21.6)), ("ensemble", (22.0, 23.6))):
        evaluate(label, "test2016", 1, bleu=bleu[0], ppl=10.0)
        evaluate(label, "test2016", 2, bleu=bleu[1], ppl=10.0)
    train("news", 2, True, 30.0)
    train("news-forward", 2, False, 36.0)
    evaluate("news", "newstest2013", 12, bleu=10.0, ppl=30.0)
    evaluate("news-forward", "newstest2013", 12, bleu=8.0, ppl=36.0)
    snapshot["study"]["rescored"] = {
        "valid|0.5": {"split": "valid", "first_pass_row": "forward-1layer", "rescorer_row": REFERENCE,
                      "first_pass": 15.0, "rescored": 16.0, "nbest": 12, "weight": 0.5},
        "test2016|0.5": {"split": "test2016", "first_pass_row": "forward-1layer", "rescorer_row": REFERENCE,
                         "first_pass": 17.0, "rescored": 18.0, "nbest": 12, "weight": 0.5}}
    snapshot["study"]["rescore_weight"] = {"chosen": 0.5, "on": "valid", "valid_bleu": {"0.0": 15.2, "0.5": 16.0}}
    return snapshot


def with_longer_depth_rows(snapshot: dict, test_ppl: dict[int, float], valid_ppl: dict[int, float]) -> dict:
    """The plan's change of 2026-12-07: claim 2 on reversed rows of 20 epochs, claim 1 on its own pairs, and the
    12-epoch 4-layer row superseded."""
    study = copy.deepcopy(snapshot)
    layout = study["study"]["layout"]
    layout["reversal_pairs"] = [[f"forward-{n}layer", f"reversed-{n}layer"] for n in (1, 2, 4)]
    layout["depth_rows"] = [f"reversed-{n}layer-20ep" for n in (1, 2, 4)]
    layout["rows"] = [*layout["rows"], *layout["depth_rows"]]
    layout["superseded"] = {"reversed-4layer-12ep": "stayed on the plateau"}
    for layers in (1, 2, 4):
        name, run_id = f"reversed-{layers}layer-20ep", f"train-reversed-{layers}layer-20ep"
        study["study"]["trained"][name] = {"mlflow_run_id": run_id, "valid_ppl": valid_ppl[layers]}
        study["runs"][run_id] = {"params": {"model.num_layers": str(layers), "optim.epochs": "20.0",
                                            "data.reverse_source": "True"}, "valid_ppl": [[100, valid_ppl[layers]]]}
        eval_id = f"eval-{name}"
        study["study"]["evaluated"][f"{name}|test2016|beam12"] = {
            "mlflow_run_id": eval_id, "label": name, "split": "test2016", "beam": 12, "signature": SIGNATURE,
            "bleu_by_length": [], "bleu_by_rarity": []}
        study["runs"][eval_id] = {"metrics": {"test2016/ppl": test_ppl[layers], "test2016/bleu": 20.0}}
    study["study"]["trained"]["reversed-4layer-12ep"] = {"mlflow_run_id": "train-old", "valid_ppl": 50.0}
    study["runs"]["train-old"] = {"params": {"model.num_layers": "4", "optim.epochs": "12.0",
                                             "data.reverse_source": "True"}, "valid_ppl": [[100, 50.0]]}
    return study


def with_a_second_split(snapshot: dict, split: str = "test2017") -> dict:
    """The same study decoded on another test set too, with the same scores."""
    study = copy.deepcopy(snapshot)
    for key, entry in list(study["study"]["evaluated"].items()):
        if entry["split"] == "test2016":
            run_id = entry["mlflow_run_id"] + f"-{split}"
            copied = {**entry, "split": split, "mlflow_run_id": run_id}
            study["study"]["evaluated"][key.replace("test2016", split)] = copied
            study["runs"][run_id] = {"metrics": {name.replace("test2016", split): value for name, value in
                                                 study["runs"][entry["mlflow_run_id"]]["metrics"].items()}}
    return study


def verdicts(snapshot: dict) -> dict[int, str]:
    return {v.claim: v.verdict for v in report.tables(report.StudyRuns(snapshot))[1]}


def metric(snapshot: dict, label: str, split: str, beam: int, name: str, value: float) -> dict:
    changed = copy.deepcopy(snapshot)
    run_id = changed["study"]["evaluated"][f"{label}|{split}|beam{beam}"]["mlflow_run_id"]
    changed["runs"][run_id]["metrics"][name] = value
    return changed


def test_a_study_like_the_paper_reproduces_every_claim():
    assert verdicts(paper_like_study()) == {1: "reproduced", 2: "reproduced", 3: "reproduced", 4: "reproduced",
                                            5: "length: reproduced; rare words: reproduced", 6: "reproduced",
                                            7: "reproduced"}


@pytest.mark.parametrize("four_layer_ppl, verdict", [
    (10.4, "reproduced in direction, not in size"),  # −3.7%: beyond the seed spread (0.2), under 5%
    (10.9, "not reproduced"),                           # deeper is worse
])
def test_depth_needs_five_percent_a_layer_and_beyond_seed_noise_for_its_direction(four_layer_ppl, verdict):
    study = metric(paper_like_study(), "reversed-4layer", "test2016", 12, "test2016/ppl", four_layer_ppl)
    study = metric(study, "forward-4layer", "test2016", 12, "test2016/ppl", four_layer_ppl * 1.25)
    assert verdicts(study)[2] == verdict


def test_reversal_short_of_ten_percent_at_one_depth_is_a_direction_and_forward_ahead_is_a_failure():
    smaller = metric(paper_like_study(), "forward-4layer", "test2016", 12, "test2016/ppl", 9.7 * 1.05)
    assert verdicts(smaller)[1] == "reproduced in direction, not in size"
    behind = metric(paper_like_study(), "forward-1layer", "test2016", 12, "test2016/bleu", 21.5)
    assert verdicts(behind)[1] == "not reproduced"


def test_reversal_and_depth_must_hold_on_every_test_set():
    both = with_a_second_split(paper_like_study())
    assert verdicts(both)[1] == verdicts(both)[2] == "reproduced"
    worse = metric(both, "forward-4layer", "test2017", 12, "test2017/ppl", 9.6)  # forward ahead on test2017 only
    assert verdicts(worse)[1] == "not reproduced"
    deeper_worse = metric(both, "reversed-4layer", "test2017", 12, "test2017/ppl", 11.0)
    assert verdicts(deeper_worse)[2] == "not reproduced"


def test_beam_two_at_half_the_gain_is_a_direction_and_within_noise_a_failure():
    study = paper_like_study()
    half = metric(metric(study, "ensemble", "test2016", 2, "test2016/bleu", 23.0),
                  REFERENCE, "test2016", 2, "test2016/bleu", 21.0)
    assert verdicts(half)[3] == "reproduced in direction, not in size"
    nothing = metric(metric(study, "ensemble", "test2016", 2, "test2016/bleu", 22.1),
                     REFERENCE, "test2016", 2, "test2016/bleu", 21.6)
    assert verdicts(nothing)[3] == "ensemble: not reproduced; one model: reproduced"


def test_an_ensemble_below_its_best_member_but_above_the_mean_is_a_direction():
    study = metric(paper_like_study(), "ensemble", "test2016", 12, "test2016/bleu", 21.9)
    assert verdicts(study)[4] == "reproduced in direction, not in size"


def test_length_and_rarity_are_judged_apart():
    study = paper_like_study()
    study["study"]["evaluated"]["news|newstest2013|beam12"]["bleu_by_length"][1]["bleu"] = 7.0  # 70% of 10
    assert verdicts(study)[5] == "length: not reproduced; rare words: reproduced"


def test_vectors_at_chance_do_not_group_by_meaning_even_when_order_moves_them():
    study = paper_like_study()
    for label in [REFERENCE, *(f"{REFERENCE}-seed{s}" for s in SEEDS)]:
        study = metric(study, label, "test2016", 12, "phrases/nearest_same_meaning", 0.4)
    assert verdicts(study)[6] == "word order reproduced, grouping by meaning not reproduced"


def test_rescoring_within_seed_noise_is_not_a_gain():
    study = paper_like_study()
    study["study"]["rescored"]["test2016|0.5"]["rescored"] = 17.3  # +0.3 against a BLEU spread of 0.4
    assert verdicts(study)[7] == "not reproduced"


def test_without_the_seeds_decoded_alone_nothing_that_needs_their_spread_is_judged():
    study = paper_like_study()
    study["study"]["layout"]["seeds"] = []
    found = verdicts(study)
    assert found[1] == found[2] == found[6] == found[7] == "not judged"


def test_the_verdicts_go_between_the_docs_markers_and_nowhere_else(tmp_path):
    doc = tmp_path / "REPRODUCTION.md"
    doc.write_text("# Title\n\n<!-- verdicts:start -->\nstale table\n<!-- verdicts:end -->\n\nprose stays\n")
    report.write_verdicts(doc, report.tables(report.StudyRuns(paper_like_study()))[1])
    text = doc.read_text()
    assert "stale table" not in text and text.endswith("<!-- verdicts:end -->\n\nprose stays\n")
    assert text.count("| **reproduced** |") == 6
    (tmp_path / "plain.md").write_text("no markers\n")
    with pytest.raises(SystemExit, match="no <!-- verdicts:start -->"):
        report.write_verdicts(tmp_path / "plain.md", [])


def test_the_report_regenerates_from_its_snapshot_alone(tmp_path):
    snapshot = tmp_path / "snapshot.json"
    snapshot.write_text(json.dumps(paper_like_study()))
    out = tmp_path / "report"
    done = subprocess.run([sys.executable, str(REPO / "study" / "report.py"), "--snapshot", str(snapshot), "--out",
                           str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    tables = (out / "tables.md").read_text()
    assert "| 2 | each added layer lowers perplexity by nearly 10% |" in tables
    for plot in ("valid_ppl", "ppl_by_depth", "bleu_vs_beam", "ensemble", "bleu_by_length", "bleu_by_rarity",
                 "rescoring"):
        assert (out / f"{plot}.png").read_bytes()[:4] == b"\x89PNG", plot


def test_while_the_rows_train_the_report_is_their_progress(tmp_path):
    study = paper_like_study()
    del study["study"]["finished"]
    study["study"]["evaluated"] = {}
    text, found = report.tables(report.StudyRuns(study))
    assert found == [] and "The study is running: 12 trainings finished, no evaluations" in text
    assert "| reversed-4layer | 4 | 12 | reversed | 8.73 | train-reversed-4layer |" in text
    assert [p.name for p in report.plots(report.StudyRuns(study), tmp_path)] == ["valid_ppl.png"]


def test_until_every_step_has_run_the_report_lists_the_evaluations_without_judging():
    study = paper_like_study()
    del study["study"]["finished"]  # the trainings and evaluations so far, as reproduce.py leaves them mid-study
    text, found = report.tables(report.StudyRuns(study))
    assert found == [] and "| # | the paper's claim |" not in text
    assert f"{len(study['study']['evaluated'])} evaluations; the verdicts come when every step" in text
    assert "| reversed-2layer | test2016 | 12 | 22.00 | – | 10.80 |" in text


def test_depth_is_judged_on_the_depth_rows_and_reversal_on_the_plans_pairs():
    # the 20-epoch depth rows: deeper is worse, and no forward row of their budget exists
    study = with_longer_depth_rows(paper_like_study(), test_ppl={1: 9.0, 2: 9.5, 4: 10.5},
                                   valid_ppl={1: 8.0, 2: 8.5, 4: 9.5})
    found = verdicts(study)
    assert found[2] == "not reproduced"
    assert found[1] == "reproduced", "reversal compares its 12-epoch pairs, untouched by the depth rows"
    text = report.tables(report.StudyRuns(study))[0]
    assert "| 4 | 20 | 9.50 | 10.50 |" in text, "the depth table shows each row's epochs"
    assert "| 4 | 12 | test2016 | 12.12 | 9.70 |" in text, "the reversal table shows the pair's epochs"
    better = with_longer_depth_rows(paper_like_study(), test_ppl={1: 12.0, 2: 10.8, 4: 9.7},
                                    valid_ppl={1: 11.0, 2: 9.8, 4: 8.8})
    assert verdicts(better)[2] == "reproduced"


def test_a_superseded_row_is_listed_with_its_reason_and_counts_for_nothing():
    study = with_longer_depth_rows(paper_like_study(), test_ppl={1: 12.0, 2: 10.8, 4: 9.7},
                                   valid_ppl={1: 11.0, 2: 9.8, 4: 8.8})
    text = report.tables(report.StudyRuns(study))[0]
    assert "| reversed-4layer-12ep | 4 | 12 | 50.00 | stayed on the plateau |" in text
    without = copy.deepcopy(study)
    del without["study"]["trained"]["reversed-4layer-12ep"]
    assert verdicts(study) == verdicts(without)


def test_every_deepest_row_is_checked_against_the_plateau_bound():
    study = paper_like_study()  # reference valid 9.72; the forward 4-layer row at 10.91 (1.12 ×)
    study["study"]["trained"]["forward-4layer"]["valid_ppl"] = 15.0  # 1.54 ×
    text = report.tables(report.StudyRuns(study))[0]
    assert "reversed-4layer 0.90 × (yes)" in text and "forward-4layer 1.54 × (no)" in text
    # the forward row also against the forward 2-layer row (12.15): what is left once the reversal's own effect is out
    assert "forward-4layer against forward-2layer, the reference's depth in its own source order: 1.23 ×" in text
    assert "reversed-4layer against" not in text


def test_the_study_time_counts_side_by_side_trainings_once_and_session_gaps_not_at_all():
    commands = [{"seconds": 600.0},                                # recorded before start times were
                {"started": 1000.0, "seconds": 3600.0},            # two trainings side by side ...
                {"started": 1060.0, "seconds": 3000.0},            # ... the second inside the first
                {"started": 4700.0, "seconds": 300.0},             # an evaluation after them
                {"started": 90_000.0, "seconds": 1200.0}]          # the next working session
    assert report.busy_seconds(commands) == 600 + 3600 + 300 + 1200


def test_a_row_is_reported_at_the_valid_perplexity_of_the_checkpoint_it_is_evaluated_with():
    study = paper_like_study()  # reversed-1layer: its best checkpoint at step 200 (10.8), the last validation worse
    run = study["runs"]["train-reversed-1layer"]
    run["valid_ppl"] = [[100, 21.6], [200, 10.8], [300, 11.9]]
    study["study"]["trained"]["reversed-1layer"].update(checkpoint="/runs/x/checkpoints/step-00000200.pt",
                                                         valid_ppl=11.9)  # study.json's last figure
    assert report.StudyRuns(study).valid_ppl("reversed-1layer") == 10.8
    assert "| 1 | 12 | 10.80 |" in report.tables(report.StudyRuns(study))[0]
