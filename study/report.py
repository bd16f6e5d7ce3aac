"""Tables, plots and verdicts of the reproduction study, regenerated from its MLflow runs.

    .venv/bin/python study/report.py --study-dir runs/study-trained --out docs/reproduction/trained \\
        --doc docs/REPRODUCTION.md

`study.json` (written by `study/reproduce.py`) says which MLflow run is which row, split and beam. Every
metric in the tables is read from those runs in the study's MLflow store and kept in `snapshot.json` beside
the tables, so the report regenerates from the committed snapshot where the store is not at hand
(`--snapshot`). Writes `tables.md` (the verdicts, then one table per claim, with run ids) and the plots; with
`--doc`, also the verdict table between the `<!-- verdicts:start -->` and `<!-- verdicts:end -->` markers of
that file. The verdict rules are docs/reproduction/plan.md's, fixed before the study ran.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import statistics
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SNAPSHOT = "snapshot.json"
CHANCE_NEAREST_SAME_MEANING = 0.4
REPRODUCED, DIRECTION, NOT_REPRODUCED, NOT_JUDGED = ("reproduced", "reproduced in direction, not in size",
                                                     "not reproduced", "not judged")


def snapshot_from_store(study_dir: Path) -> dict:
    """study.json and, for every MLflow run it names, the metrics and parameters the report reads."""
    from mlflow.tracking import MlflowClient

    study = json.loads((study_dir / "study.json").read_text())
    client = MlflowClient(f"sqlite:///{study_dir.resolve()}/mlflow.db")
    runs = {}
    for name, trained in study.get("trained", {}).items():
        run = client.get_run(trained["mlflow_run_id"])
        history = client.get_metric_history(run.info.run_id, "valid/ppl")
        runs[run.info.run_id] = {"name": f"train {name}", "params": {
            key: run.data.params.get(key) for key in ("data.reverse_source", "model.num_layers", "train.seed",
                                                      "optim.epochs")},
            "valid_ppl": sorted([m.step, m.value] for m in history)}
    for key, evaluated in study.get("evaluated", {}).items():
        run = client.get_run(evaluated["mlflow_run_id"])
        runs[run.info.run_id] = {"name": f"evaluate {key}", "metrics": dict(run.data.metrics)}
    return {"study": study, "runs": runs}


class StudyRuns:
    """The study's trainings and evaluations, with the metrics their MLflow runs hold."""

    def __init__(self, snapshot: dict):
        self.snapshot, self.study, self.runs = snapshot, snapshot["study"], snapshot["runs"]
        self.trained, self.evaluated = self.study.get("trained", {}), self.study.get("evaluated", {})
        self.layout = self.study.get("layout", {})
        self.reference = self.study.get("ensemble_row")
        self.finished = bool(self.study.get("finished"))
        """False while the study still runs (reproduce.py marks its end): the report is then its progress."""

    # --- what the study holds -------------------------------------------------------------------------
    def entry(self, label: str, split: str, beam: int) -> dict | None:
        return self.evaluated.get(f"{label}|{split}|beam{beam}")

    def score(self, label: str, split: str, beam: int, metric: str) -> float | None:
        """A metric of an evaluation as its MLflow run holds it: bleu, chrf, ppl or a full name."""
        entry = self.entry(label, split, beam)
        if entry is None:
            return None
        name = {"bleu": f"{split}/bleu", "chrf": f"{split}/chrf", "ppl": f"{split}/ppl"}.get(metric, metric)
        return self.runs[entry["mlflow_run_id"]]["metrics"].get(name)

    def param(self, name: str, key: str) -> str | None:
        return self.runs[self.trained[name]["mlflow_run_id"]]["params"].get(key)

    def layers(self, name: str) -> int:
        return int(self.param(name, "model.num_layers"))

    def epochs(self, name: str) -> str:
        """The row's training budget in epochs ("–" in snapshots from before it was recorded)."""
        epochs = self.param(name, "optim.epochs")
        return "–" if epochs is None else f"{float(epochs):g}"

    def reversed_source(self, name: str) -> bool:
        return self.param(name, "data.reverse_source") == "True"

    def valid_ppl(self, name: str) -> float:
        """Valid perplexity of the checkpoint the study evaluates (the best one under train.keep_best), read from
        the MLflow curve at that checkpoint's step; study.json's own figure where the curve lacks the step."""
        trained = self.trained[name]
        step = re.search(r"step-(\d+)\.pt$", trained.get("checkpoint", ""))
        at_step = {s: v for s, v in self.valid_curve(name)}
        return at_step.get(int(step.group(1)), trained["valid_ppl"]) if step else trained["valid_ppl"]

    def valid_curve(self, name: str) -> list[tuple[int, float]]:
        return [tuple(point) for point in self.runs[self.trained[name]["mlflow_run_id"]]["valid_ppl"]]

    def rows(self) -> list[str]:
        """The single-model rows on the main data (not the seeds, not the long-sentence rows)."""
        long_rows = set(self.long_rows())
        return self.layout.get("rows") or [n for n in self.trained if "-seed" not in n and n not in long_rows]

    def long_rows(self) -> list[str]:
        return self.layout.get("long_rows", [])

    def long_splits(self) -> list[str]:
        return self.layout.get("long_splits", [])

    def splits(self) -> list[str]:
        long_splits = set(self.long_splits())
        return [s for s in dict.fromkeys(e["split"] for e in self.evaluated.values()) if s not in long_splits]

    def top(self) -> int:
        return max(e["beam"] for e in self.evaluated.values())

    def beams(self, label: str, split: str) -> list[int]:
        return sorted(e["beam"] for e in self.evaluated.values() if e["label"] == label and e["split"] == split)

    def members(self) -> list[str]:
        """The reference and its seeds, each decoded alone (the seed spread), when the study did that."""
        seeds = [f"{self.reference}-seed{s}" for s in self.layout.get("seeds", [])]
        return [self.reference, *seeds] if seeds and all(
            self.entry(s, self.splits()[0], self.top()) for s in seeds) else []

    def member_scores(self, split: str, metric: str) -> list[float]:
        return [v for m in self.members() if (v := self.score(m, split, self.top(), metric)) is not None]

    def spread(self, split: str, metric: str) -> float | None:
        """max − min over the reference's seeds: the noise floor every verdict compares against."""
        values = self.member_scores(split, metric)
        return max(values) - min(values) if len(values) > 1 else None

    def average_label(self) -> str | None:
        return next((e["label"] for e in self.evaluated.values() if e["label"].startswith(
            f"{self.reference}-average")), None)

    def depth_rows(self) -> list[str]:
        """The reversed single models, shallow to deep (claim 2)."""
        chosen = self.layout.get("depth_rows") or [n for n in self.rows() if self.reversed_source(n)]
        return sorted(chosen, key=self.layers)

    def forward_of(self, row: str) -> str | None:
        """The forward row of the same depth as a reversed one."""
        return next((n for n in self.rows() if not self.reversed_source(n) and self.layers(n) == self.layers(row)),
                    None)

    def reversal_pairs(self) -> list[tuple[str, str]]:
        """(forward, reversed) rows compared for claim 1, shallow to deep: the plan's pairs, each at one budget,
        or each depth row with the forward row of its depth."""
        pairs = self.layout.get("reversal_pairs") or [[self.forward_of(r), r] for r in self.depth_rows()]
        return sorted(((f, r) for f, r in pairs if f), key=lambda pair: self.layers(pair[1]))

    def superseded(self) -> dict[str, str]:
        """Rows trained, then replaced by a change to the plan: reported with their curves, not counted."""
        return {name: why for name, why in self.layout.get("superseded", {}).items() if name in self.trained}

    def same_order_peer(self, row: str) -> str | None:
        """For a row whose source order is not the reference's: the row at the reference's depth and budget in
        the row's own order (the off-plateau bound without the reversal's own effect in it)."""
        if self.reversed_source(row) == self.reversed_source(self.reference):
            return None
        return next((r for r in self.rows() if self.reversed_source(r) == self.reversed_source(row)
                     and self.layers(r) == self.layers(self.reference)
                     and self.epochs(r) == self.epochs(self.reference)), None)

    def deepest_rows(self) -> list[str]:
        """Every counted row of the greatest depth: each must be off the plateau for the study to count."""
        deepest = max(self.layers(r) for r in self.rows())
        return [r for r in self.rows() if self.layers(r) == deepest]


def fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def pct(before: float | None, after: float | None) -> str:
    return "–" if before is None or after is None else f"{100 * (after - before) / before:+.1f}%"


def bounds(bin_: dict) -> str:
    high = float(bin_["high"])
    return f">{float(bin_['low']):.0f}" if math.isinf(high) else f"{float(bin_['low']):.0f}–{high:.0f}"


@dataclass
class Verdict:
    claim: int
    title: str
    paper: str
    ours: str
    verdict: str


# --- claims: each returns its table lines and its verdict -------------------------------------------------
def claim_reversal(runs: StudyRuns) -> tuple[list[str], Verdict]:
    top, splits = runs.top(), runs.splits()
    lines = ["## Claim 1: reversing the source", "",
             f"Test perplexity and BLEU at beam {top}, forward against reversed at each depth; the noise floor is "
             f"the spread (max − min) over the reference's {len(runs.members()) or 1} seeds.", "",
             "| layers | epochs | split | forward ppl | reversed ppl | change | forward BLEU | reversed BLEU | gain |",
             "|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    judged = []  # (split, layers, ppl change, ppl drop, BLEU gain) for every split and depth
    for forward, row in runs.reversal_pairs():
        for split in splits:
            fp, rp = runs.score(forward, split, top, "ppl"), runs.score(row, split, top, "ppl")
            fb, rb = runs.score(forward, split, top, "bleu"), runs.score(row, split, top, "bleu")
            lines.append(f"| {runs.layers(row)} | {runs.epochs(row)} | {split} | {fmt(fp)} | {fmt(rp)} | "
                         f"{pct(fp, rp)} | {fmt(fb)} | "
                         f"{fmt(rb)} | {fmt(None if rb is None or fb is None else rb - fb, 2)} |")
            if None not in (fp, rp, fb, rb):
                judged.append((split, runs.layers(row), (rp - fp) / fp, fp - rp, rb - fb))
    spreads = {split: (runs.spread(split, "ppl"), runs.spread(split, "bleu")) for split in splits}
    lines += ["", "Seed spread: " + "; ".join(f"{split} ppl {fmt(ppl)}, BLEU {fmt(bleu)}"
                                             for split, (ppl, bleu) in spreads.items()) + "."]
    for row in runs.long_rows():
        for split in runs.long_splits():
            lines.append(f"- {row} ({'reversed' if runs.reversed_source(row) else 'forward'}), {split}: ppl "
                         f"{fmt(runs.score(row, split, top, 'ppl'))}, BLEU {fmt(runs.score(row, split, top, 'bleu'))}")
    if not judged or any(None in spread for spread in spreads.values()):
        verdict = NOT_JUDGED
    elif all(drop > spreads[split][0] and gain > spreads[split][1] for split, _, _, drop, gain in judged):
        verdict = REPRODUCED if all(change <= -0.10 for _, _, change, _, _ in judged) else DIRECTION
    else:
        verdict = NOT_REPRODUCED
    ppl_spread, bleu_spread = spreads[splits[0]]
    judged_first = [(layers, change, drop, gain) for split, layers, change, drop, gain in judged if split == splits[0]]
    ours = "; ".join(f"{layers} layer{'s' * (layers > 1)}: ppl {100 * change:+.0f}%, BLEU {gain:+.2f}"
                     for layers, change, _, gain in judged_first)
    return lines, Verdict(1, "reversing the source helps", "test ppl 5.8 → 4.7 (−19%), BLEU 25.9 → 30.6",
                          f"{splits[0]}, forward → reversed: {ours or '–'} (seed spread: ppl {fmt(ppl_spread)}, "
                          f"BLEU {fmt(bleu_spread)})", verdict)


def claim_depth(runs: StudyRuns) -> tuple[list[str], Verdict]:
    top, splits, depth = runs.top(), runs.splits(), runs.depth_rows()
    lines = ["## Claim 2: depth (reversed source)", "",
             "| layers | epochs | valid ppl | " + " | ".join(f"{s} ppl" for s in splits) + " |",
             "|---:|---:|---:|" + "---:|" * len(splits)]
    for row in depth:
        lines.append(f"| {runs.layers(row)} | {runs.epochs(row)} | {fmt(runs.valid_ppl(row))} | "
                     + " | ".join(fmt(runs.score(row, s, top, "ppl")) for s in splits) + " |")
    lines += ["", "| step | valid | " + " | ".join(splits) + " |", "|---|---:|" + "---:|" * len(splits)]
    steps = []  # (split, shallow layers, deep layers, ppl before, ppl after) for every split
    for shallow, deep in zip(depth, depth[1:]):
        steps += [(s, runs.layers(shallow), runs.layers(deep), runs.score(shallow, s, top, "ppl"),
                   runs.score(deep, s, top, "ppl")) for s in splits]
        lines.append(f"| {runs.layers(shallow)} → {runs.layers(deep)} | "
                     f"{pct(runs.valid_ppl(shallow), runs.valid_ppl(deep))} | "
                     + " | ".join(pct(runs.score(shallow, s, top, "ppl"), runs.score(deep, s, top, "ppl"))
                                  for s in splits) + " |")
    spreads = {s: runs.spread(s, "ppl") for s in splits}
    spread = spreads[splits[0]]
    reference_valid = runs.valid_ppl(runs.reference)
    off_plateau = {r: runs.valid_ppl(r) / reference_valid for r in runs.deepest_rows()}
    lines += ["", "Seed spread of the test perplexity (the reference's seeds): "
              + ", ".join(f"{s} {fmt(v)}" for s, v in spreads.items())
              + f". Off the plateau (valid ppl within 1.5 × the reference's {fmt(reference_valid)}): "
              + ", ".join(f"{r} {ratio:.2f} × ({'yes' if ratio <= 1.5 else 'no'})" for r, ratio in off_plateau.items())
              + "."]
    for row in off_plateau:  # a row in the other source order also against the reference's depth in its own order
        peer = runs.same_order_peer(row)
        if peer is not None:
            lines.append(f"{row} against {peer}, the reference's depth in its own source order: "
                         f"{runs.valid_ppl(row) / runs.valid_ppl(peer):.2f} × "
                         f"({fmt(runs.valid_ppl(row))} vs {fmt(runs.valid_ppl(peer))}).")
    if not steps or None in spreads.values() or any(None in step for step in steps):
        verdict = NOT_JUDGED
    elif all((after - before) / before <= -0.05 for _, _, _, before, after in steps):
        verdict = REPRODUCED
    elif all(before - after > spreads[s] for s, _, _, before, after in steps):
        verdict = DIRECTION
    else:
        verdict = NOT_REPRODUCED
    steps = [(a, b, before, after) for s, a, b, before, after in steps if s == splits[0]]
    ours = "; ".join(f"{a} → {b} layers: {pct(before, after)}" for a, b, before, after in steps)
    return lines, Verdict(2, "each added layer lowers perplexity by nearly 10%", "4 layers chosen for it",
                          f"{splits[0]} ppl {ours or '–'} (seed spread {fmt(spread)})", verdict)


def claim_beam(runs: StudyRuns) -> tuple[list[str], Verdict]:
    split = next((s for s in runs.splits() if len(runs.beams(runs.reference, s)) > 1), runs.splits()[0])
    beams = runs.beams(runs.reference, split)
    lines = [f"## Claim 3: beam size ({split})", "", "| model | " + " | ".join(f"beam {b}" for b in beams)
             + " | share of the gain at beam 2 |", "|---|" + "---:|" * (len(beams) + 1)]
    shares, gains = {}, {}
    for label in (runs.reference, "ensemble"):
        scores = {b: runs.score(label, split, b, "bleu") for b in beams}
        if {1, 2} <= set(scores) and None not in scores.values() and max(beams) > 2:
            total = scores[max(beams)] - scores[1]
            shares[label] = (scores[2] - scores[1]) / total if total > 0 else None
            gains[label] = scores[2] - scores[1]
        lines.append(f"| {label} | " + " | ".join(fmt(scores[b]) for b in beams) + " | "
                     + (f"{100 * shares[label]:.0f}%" if shares.get(label) is not None else "–") + " |")
    spread = runs.spread(split, "bleu")
    lines += ["", f"Seed spread of BLEU: {fmt(spread)}. The paper (ensemble of 5): 33.00 / 34.50 / 34.81, 83% at "
                  "beam 2."]

    def judge(label: str) -> str:
        share = shares.get(label)
        if spread is None or label not in gains:
            return NOT_JUDGED
        if share is not None and share >= 2 / 3:
            return REPRODUCED
        return DIRECTION if gains[label] > spread else NOT_REPRODUCED

    verdicts = {label: judge(label) for label in (runs.reference, "ensemble")}
    ours = "; ".join(f"{'ensemble' if label == 'ensemble' else 'one model'}: "
                     f"{'–' if shares.get(label) is None else f'{100 * shares[label]:.0f}%'}" for label in verdicts)
    verdict = verdicts["ensemble"] if len(set(verdicts.values())) == 1 else \
        f"ensemble: {verdicts['ensemble']}; one model: {verdicts[runs.reference]}"
    return lines, Verdict(3, "beam 2 gives most of the beam search's gain", "83% of beam 12's gain (ensemble)",
                          f"share of the beam-{max(beams)} gain at beam 2, {split}: {ours}", verdict)


def claim_ensemble(runs: StudyRuns) -> tuple[list[str], Verdict]:
    top, splits = runs.top(), runs.splits()
    average = runs.average_label()
    lines = [f"## Claim 4: an ensemble of the reference's {len(runs.members()) or '–'} seeds", "",
             "| split | mean member | best member | ensemble | " + (f"{average} | " if average else "")
             + "mean member ppl | ensemble ppl |", "|---|---:|---:|---:|" + ("---:|" if average else "") + "---:|---:|"]
    beats_best, beats_mean, gains = [], [], []
    for split in splits:
        bleu = runs.member_scores(split, "bleu")
        ensemble = runs.score("ensemble", split, top, "bleu")
        mean, best = (statistics.mean(bleu), max(bleu)) if bleu else (None, None)
        ppl = runs.member_scores(split, "ppl")
        mean_ppl = statistics.mean(ppl) if ppl else None
        lines.append(f"| {split} | {fmt(mean)} | {fmt(best)} | {fmt(ensemble)} | "
                     + (f"{fmt(runs.score(average, split, top, 'bleu'))} | " if average else "")
                     + f"{fmt(mean_ppl)} | {fmt(runs.score('ensemble', split, top, 'ppl'))} |")
        if None not in (ensemble, best):
            beats_best.append(ensemble > best)
            beats_mean.append(ensemble > mean)
            gains.append((split, ensemble - mean, ensemble - best))
    if average:
        lines += ["", f"{average}: the reference's last checkpoints averaged (`dist-s2s average`), decoded alone."]
    if not gains:
        verdict = NOT_JUDGED
    elif all(beats_best):
        verdict = REPRODUCED
    else:
        verdict = DIRECTION if all(beats_mean) else NOT_REPRODUCED
    ours = "; ".join(f"{split}: {mean_gain:+.2f} over the mean member, {best_gain:+.2f} over the best"
                     for split, mean_gain, best_gain in gains)
    return lines, Verdict(4, "an ensemble of 5 beats one model", "30.59 → 34.81 (+4.2 BLEU)", ours or "–", verdict)


def claim_length_and_rarity(runs: StudyRuns) -> tuple[list[str], Verdict]:
    top = runs.top()
    lines = [f"## Claim 5: BLEU by source length and by word rarity (beam {top}; bin: BLEU (sentences))", ""]
    reversed_long = [r for r in runs.long_rows() if runs.reversed_source(r)]
    length_cases = [(r, s) for r in reversed_long for s in runs.long_splits()] or [(runs.reference, runs.splits()[0])]
    rarity_cases = [(runs.reference, runs.splits()[0]), *[(r, s) for r in reversed_long for s in runs.long_splits()]]
    for label, split in dict.fromkeys([*length_cases, *rarity_cases, ("ensemble", runs.splits()[0])]):
        entry = runs.entry(label, split, top)
        for kind in ("length", "rarity") if entry else ():
            lines.append(f"- {split}, {label}, by {kind}: " + ", ".join(
                f"{bounds(b)}: {fmt(b['bleu'])} ({b['sentences']})" for b in entry[f"bleu_by_{kind}"]))
    length_ok, length_note = [], []
    for label, split in length_cases:
        entry, overall = runs.entry(label, split, top), runs.score(label, split, top, "bleu")
        short = [b for b in entry["bleu_by_length"] if float(b["high"]) <= 35 and b["sentences"]] if entry else []
        if not short or not overall:  # nothing to judge a share of
            continue
        worst = min(short, key=lambda b: b["bleu"])
        length_ok.append(all(b["bleu"] >= 0.8 * overall for b in short))
        length_note.append(f"{split}: lowest bin up to 35 words {bounds(worst)} at {fmt(worst['bleu'])} "
                           f"= {100 * worst['bleu'] / overall:.0f}% of {fmt(overall)}")
    rarity_ok, rarity_note = [], []
    for label, split in rarity_cases:
        entry = runs.entry(label, split, top)
        if entry is None:
            continue
        bins = entry["bleu_by_rarity"]
        rarity_ok.append(bins[-1]["bleu"] == min(b["bleu"] for b in bins))
        rarity_note.append(f"{split}: most frequent sixth {fmt(bins[0]['bleu'])} → rarest {fmt(bins[-1]['bleu'])}")
    lines += ["", "Length: every bin up to 35 words at 80% of the overall BLEU or more? "
              + ("yes" if length_ok and all(length_ok) else "no") + " (" + "; ".join(length_note) + ")",
              "Rarity: the rarest sixth scores lowest? " + ("yes" if rarity_ok and all(rarity_ok) else "no")
              + " (" + "; ".join(rarity_note) + ")"]
    halves = [f"length: {(REPRODUCED if all(length_ok) else NOT_REPRODUCED) if length_ok else NOT_JUDGED}",
              f"rare words: {(REPRODUCED if all(rarity_ok) else NOT_REPRODUCED) if rarity_ok else NOT_JUDGED}"]
    return lines, Verdict(5, "little degradation below 35 words; worse on rarer words", "Figure 3",
                          "; ".join(length_note + rarity_note) or "–", "; ".join(halves))


def claim_sentence_vectors(runs: StudyRuns) -> tuple[list[str], Verdict]:
    top, split = runs.top(), runs.splits()[0]
    names = {"nearest": "phrases/nearest_same_meaning", "ratio": "phrases/between_over_within",
             "apart": "phrases/order_told_apart", "cosine": "phrases/order_pair_cosine"}
    lines = ["## Claim 6: sentence vectors (Figure 2's 12 phrases)", "",
             f"Nearest same meaning: share of phrases whose nearest other phrase means the same (chance "
             f"{CHANCE_NEAREST_SAME_MEANING}). Between / within: mean distance between meanings over within one. "
             "Order told apart: share of phrases nearer a phrase of their meaning than their name-swapped twin "
             "(a bag of words: 0). Pair cosine: \"John admires Mary\" against \"Mary admires John\".", "",
             "| model | nearest same meaning | between / within | order told apart | pair cosine |",
             "|---|---:|---:|---:|---:|"]
    for label in [*runs.rows(), *runs.members()[1:], "ensemble"]:
        if runs.entry(label, split, top):
            lines.append(f"| {label} | " + " | ".join(fmt(runs.score(label, split, top, n)) for n in names.values())
                         + " |")
    nearest = [runs.score(m, split, top, names["nearest"]) for m in runs.members()]
    apart = [runs.score(m, split, top, names["apart"]) for m in runs.members()]
    if len(nearest) < 2 or None in nearest or None in apart:
        return lines, Verdict(6, "sentence vectors group by meaning, sensitive to word order", "Figure 2", "–",
                              NOT_JUDGED)
    above, spread = statistics.mean(nearest) - CHANCE_NEAREST_SAME_MEANING, max(nearest) - min(nearest)
    told_apart = statistics.mean(apart)
    lines += ["", f"Over the {len(nearest)} seeds: nearest same meaning {statistics.mean(nearest):.2f} (chance "
                  f"{CHANCE_NEAREST_SAME_MEANING}, spread {spread:.2f}); order told apart {told_apart:.2f}."]
    grouping, order = above > spread, told_apart > 0.5
    verdict = REPRODUCED if grouping and order else (
        f"word order {'reproduced' if order else 'not reproduced'}, grouping by meaning "
        f"{'reproduced' if grouping else 'not reproduced'}")
    return lines, Verdict(6, "sentence vectors group by meaning, sensitive to word order", "Figure 2",
                          f"nearest same meaning {statistics.mean(nearest):.2f} over {len(nearest)} seeds (chance "
                          f"{CHANCE_NEAREST_SAME_MEANING}, spread {spread:.2f}); order told apart {told_apart:.2f}",
                          verdict)


def claim_rescoring(runs: StudyRuns) -> tuple[list[str], Verdict]:
    lines = ["## Claim 7: rescoring a weaker model's n-best lists", "",
             "| split | first pass | BLEU | rescored by | BLEU | n-best | weight |",
             "|---|---|---:|---|---:|---:|---:|"]
    chosen = runs.study.get("rescore_weight")
    rescored = runs.study.get("rescored", {})
    for r in rescored.values():
        lines.append(f"| {r['split']} | {r['first_pass_row']} | {fmt(r['first_pass'])} | {r['rescorer_row']} | "
                     f"{fmt(r['rescored'])} | {r['nbest']} | {r['weight']} |")
    if chosen:
        lines += ["", f"Weight of the list's own score chosen on {chosen['on']} BLEU: {chosen['chosen']} (tried: "
                  + ", ".join(f"{w}: {b}" for w, b in chosen["valid_bleu"].items()) + ")."]
    weight = chosen["chosen"] if chosen else None
    final = [r for r in rescored.values() if r["split"] in runs.splits() and (weight is None or r["weight"] == weight)]
    spread = runs.spread(runs.splits()[0], "bleu")
    if not final or spread is None:
        return lines, Verdict(7, "rescoring n-best lists with the LSTM helps", "33.30 → 35.85", "–", NOT_JUDGED)
    first = final[0]
    gain = first["rescored"] - first["first_pass"]
    return lines, Verdict(7, "rescoring n-best lists with the LSTM helps", "33.30 → 35.85 (1000-best)",
                          f"{first['first_pass_row']}'s {first['nbest']}-best on {first['split']}: "
                          f"{fmt(first['first_pass'])} → {fmt(first['rescored'])} ({gain:+.2f}; seed spread "
                          f"{fmt(spread)})", REPRODUCED if gain > spread else NOT_REPRODUCED)


CLAIMS = (claim_reversal, claim_depth, claim_beam, claim_ensemble, claim_length_and_rarity, claim_sentence_vectors,
          claim_rescoring)


def verdict_table(verdicts: list[Verdict]) -> list[str]:
    return ["| # | the paper's claim | paper | ours | verdict |", "|---|---|---|---|---|"] + [
        f"| {v.claim} | {v.title} | {v.paper} | {v.ours} | **{v.verdict}** |" for v in verdicts]


def progress(runs: StudyRuns) -> str:
    """tables.md while the study runs: each finished training's valid perplexity, each finished evaluation's
    scores; the verdicts wait for every step of the plan."""
    replaced = len(runs.superseded())
    lines = [f"The study is running: {len(runs.trained)} trainings finished"
             + (f" ({replaced} of them replaced by a change to the plan)" if replaced else "")
             + f", {len(runs.evaluated) or 'no'} evaluation{'s' * (len(runs.evaluated) != 1)}; the verdicts come "
             "when every step of the plan has run. Valid perplexity of the best checkpoint, read from MLflow:", "",
             "| training | layers | epochs | source | valid ppl | MLflow run |", "|---|---:|---:|---|---:|---|"]
    for name, trained in runs.trained.items():
        lines.append(f"| {name} | {runs.layers(name)} | {runs.epochs(name)} | "
                     f"{'reversed' if runs.reversed_source(name) else 'forward'} | "
                     f"{fmt(runs.valid_ppl(name))} | {trained['mlflow_run_id']} |")
    if runs.evaluated:
        lines += ["", "## Evaluations so far", "", "| evaluation | split | beam | BLEU | chrF | test ppl |",
                  "|---|---|---:|---:|---:|---:|"]
        lines += [f"| {e['label']} | {e['split']} | {e['beam']} | "
                  + " | ".join(fmt(runs.score(e["label"], e["split"], e["beam"], m)) for m in ("bleu", "chrf", "ppl"))
                  + " |" for e in runs.evaluated.values()]
    return "\n".join(lines + [""] + _runs_and_commands(runs)) + "\n"


def tables(runs: StudyRuns) -> tuple[str, list[Verdict]]:
    """tables.md: the verdicts, each claim's table, the rows that count, the runs and the commands."""
    if not runs.finished:
        return progress(runs), []
    sections, verdicts = [], []
    for claim in CLAIMS:
        lines, verdict = claim(runs)
        sections.append(lines)
        verdicts.append(verdict)
    signature = next(iter(runs.evaluated.values()))["signature"]["bleu"]
    reference_bleu = runs.score(runs.reference, runs.splits()[0], runs.top(), "bleu")
    head = [f"Study: {len(runs.trained)} trainings, {len(runs.evaluated)} evaluations; the reference row is "
            f"{runs.reference} ({runs.splits()[0]} BLEU {fmt(reference_bleu)}). BLEU is sacreBLEU ({signature}); "
            "perplexity is per reference word and </s>, teacher-forced. Every metric is read from the study's "
            "MLflow runs (snapshot.json keeps them), BLEU by length and rarity and rescoring from study.json.", "",
            *verdict_table(verdicts), ""]
    body = [line for lines in sections for line in [*lines, ""]]
    return "\n".join(head + body + _runs_and_commands(runs)) + "\n", verdicts


def _runs_and_commands(runs: StudyRuns) -> list[str]:
    lines = []
    if superseded := runs.superseded():
        lines += ["## Rows replaced by a change to the plan (not counted)", "",
                  "| training | layers | epochs | valid ppl | why |", "|---|---:|---:|---:|---|"]
        lines += [f"| {name} | {runs.layers(name)} | {runs.epochs(name)} | {fmt(runs.valid_ppl(name))} | "
                  f"{why} |" for name, why in superseded.items()]
        lines += [""]
    lines += ["## MLflow runs", "", "| what | run id |", "|---|---|"]
    lines += [f"| train {name} | {t['mlflow_run_id']} |" for name, t in runs.trained.items()]
    lines += [f"| evaluate {e['label']} {e['split']} beam {e['beam']} | {e['mlflow_run_id']} |"
              for e in runs.evaluated.values()]
    commands = runs.study.get("commands", [])
    lines += ["", f"## Commands, in the order they ended (minutes; {busy_seconds(commands) / 3600:.1f} hours of "
                  f"wall-clock time in all, {sum(c['seconds'] for c in commands) / 3600:.1f} hours of commands)",
              "", "```"]
    lines += [f"{c['command'].replace(str(REPO) + '/', '')}    # {c['seconds'] / 60:.1f}"
              + (f", {c['threads']} thread{'s' * (c['threads'] > 1)}" if c.get("threads") else "") for c in commands]
    return lines + ["```"]


def busy_seconds(commands: list[dict]) -> float:
    """The wall-clock time the study's commands took: commands that ran side by side (`reproduce.py --parallel`)
    counted once, the gaps between working sessions not at all. Commands recorded without a start time ran one
    at a time."""
    spans = sorted((c["started"], c["started"] + c["seconds"]) for c in commands if "started" in c)
    total = sum(c["seconds"] for c in commands if "started" not in c)
    end = float("-inf")
    for start, stop in spans:
        total += max(0.0, stop - max(start, end))
        end = max(end, stop)
    return total


# --- plots ------------------------------------------------------------------------------------------------
def plots(runs: StudyRuns, out: Path) -> list[Path]:
    written = []
    figure, axis = plt.subplots(figsize=(5.5, 3.8))  # every training's valid perplexity
    for name in runs.trained:
        if curve := runs.valid_curve(name):
            steps, values = zip(*curve)
            seed = "-seed" in name
            axis.plot(steps, values, marker="" if seed else ".", linestyle=":" if seed else "-",
                      linewidth=0.8 if seed else 1.5, label=name)
    axis.set(xlabel="step", ylabel="valid perplexity", yscale="log", title="validation perplexity")
    axis.legend(fontsize=6)
    written.append(save_figure(figure, out / "valid_ppl.png"))
    if not runs.finished:  # still running: the claims' plots wait for every step
        return written

    top, splits, reference = runs.top(), runs.splits(), runs.reference
    depth = runs.depth_rows()  # claims 1 and 2: perplexity by depth, forward and reversed, with the seed spread
    figure, axis = plt.subplots(figsize=(4.8, 3.6))
    pairs = runs.reversal_pairs()
    lines = [(depth, "reversed (depth rows)" if [r for _, r in pairs] != depth else "reversed")]
    if [r for _, r in pairs] != depth:  # claim 1's reversed rows differ from claim 2's: both drawn
        lines.append(([r for _, r in pairs], "reversed (reversal pairs)"))
    lines.append(([f for f, _ in pairs], "forward"))
    for rows, label in lines:
        present = [r for r in rows if runs.score(r, splits[0], top, "ppl") is not None]
        axis.plot([runs.layers(r) for r in present], [runs.score(r, splits[0], top, "ppl") for r in present],
                  marker="o", label=f"{label}, {splits[0]}")
    axis.plot([runs.layers(r) for r in depth], [runs.valid_ppl(r) for r in depth], marker=".",
              linestyle="--", label="reversed, valid")
    member_ppl = runs.member_scores(splits[0], "ppl")
    if member_ppl:
        layers = runs.layers(reference)
        axis.vlines(layers, min(member_ppl), max(member_ppl), color="black", linewidth=3, alpha=0.4,
                    label=f"{len(member_ppl)} seeds' range")
    axis.set(xlabel="LSTM layers (encoder and decoder)", ylabel="test perplexity",
             xticks=[runs.layers(r) for r in depth], title="perplexity by depth and source order")
    axis.legend(fontsize=7)
    written.append(save_figure(figure, out / "ppl_by_depth.png"))

    swept = [s for s in splits if len(runs.beams(reference, s)) > 1]
    if swept:  # claim 3
        figure, axes = plt.subplots(1, len(swept), figsize=(4 * len(swept), 3.2), squeeze=False)
        for axis, split in zip(axes[0], swept):
            for label in (reference, "ensemble"):
                beams = runs.beams(label, split)
                axis.plot(beams, [runs.score(label, split, b, "bleu") for b in beams], marker="o", label=label)
            beams = runs.beams(reference, split)
            axis.set(title=split, xlabel="beam size", ylabel="BLEU", xscale="log", xticks=beams, xticklabels=beams)
            axis.legend(fontsize=7)
        written.append(save_figure(figure, out / "bleu_vs_beam.png"))

    if runs.members():  # claim 4
        average = runs.average_label()
        figure, axes = plt.subplots(1, len(splits), figsize=(4.2 * len(splits), 3.4), squeeze=False)
        for axis, split in zip(axes[0], splits):
            labels = [*runs.members(), "ensemble", *([average] if average else [])]
            names = [m.replace(reference, "seed 1") if m == reference else m.replace(f"{reference}-", "")
                     for m in labels]
            axis.bar(range(len(labels)), [runs.score(m, split, top, "bleu") or 0 for m in labels],
                     color=["tab:blue"] * len(runs.members()) + ["tab:orange"] + ["tab:green"] * bool(average))
            axis.set_xticks(range(len(labels)), names, rotation=45, fontsize=7)
            axis.set(title=split, ylabel="BLEU")
        written.append(save_figure(figure, out / "ensemble.png"))

    axis_labels = {"length": "source sentence length (words)", "rarity": "mean frequency rank of source words"}
    long_cases = [(r, s) for r in runs.long_rows() for s in runs.long_splits()]
    for kind, xlabel in axis_labels.items():  # claim 5
        panels = [*splits, *runs.long_splits()]
        figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
        for axis, split in zip(axes[0], panels):
            labels = [r for r, s in long_cases if s == split] if split in runs.long_splits() else [reference,
                                                                                                 "ensemble"]
            for label in labels:
                entry = runs.entry(label, split, top)
                if entry and entry[f"bleu_by_{kind}"]:
                    bins = entry[f"bleu_by_{kind}"]
                    axis.plot(range(len(bins)), [b["bleu"] for b in bins], marker="o", label=label)
                    axis.set_xticks(range(len(bins)), [bounds(b) for b in bins], rotation=45, fontsize=7)
            axis.set(title=split, xlabel=xlabel, ylabel="BLEU")
            axis.legend(fontsize=6)
        written.append(save_figure(figure, out / f"bleu_by_{kind}.png"))

    chosen = runs.study.get("rescore_weight")
    if chosen:  # claim 7
        weights = sorted(float(w) for w in chosen["valid_bleu"])
        figure, axis = plt.subplots(figsize=(4.5, 3.3))
        axis.plot(weights, [chosen["valid_bleu"][str(w)] for w in weights], marker="o",
                  label=f"{chosen['on']} (rescored)")
        axis.set(xlabel="weight of the first pass's own score", ylabel="BLEU", title="rescoring weight")
        axis.legend(fontsize=7)
        written.append(save_figure(figure, out / "rescoring.png"))

    for label, name in ((reference, "sentence_pca.png"), ("ensemble", "sentence_pca_ensemble.png")):  # claim 6
        entry = runs.entry(label, splits[0], top)
        source = Path(entry["report_dir"]) / "sentence_pca.png" if entry else None
        if source and source.is_file():
            shutil.copyfile(source, out / name)
            written.append(out / name)
    return written


def save_figure(figure, path: Path) -> Path:
    """Every study plot the same way: tight, 120 dpi, the figure closed."""
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def write_verdicts(doc: Path, verdicts: list[Verdict]) -> None:
    """The verdict table into `doc` between its markers."""
    start, end = "<!-- verdicts:start -->", "<!-- verdicts:end -->"
    text = doc.read_text()
    if start not in text or end not in text:
        raise SystemExit(f"{doc}: no {start} … {end} markers to write the verdicts between")
    before, rest = text.split(start, 1)
    doc.write_text(before + start + "\n" + "\n".join(verdict_table(verdicts)) + "\n" + end + rest.split(end, 1)[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study-dir", type=Path, default=REPO / "runs" / "study-trained",
                        help="the study's run_dir (study.json and mlflow.db)")
    parser.add_argument("--snapshot", type=Path, help="regenerate from this snapshot.json instead of the store")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "reproduction" / "trained")
    parser.add_argument("--doc", type=Path, help="a markdown file whose verdict table to rewrite")
    args = parser.parse_args()
    snapshot = json.loads(args.snapshot.read_text()) if args.snapshot else snapshot_from_store(args.study_dir)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / SNAPSHOT).write_text(json.dumps(snapshot, indent=1) + "\n")
    runs = StudyRuns(snapshot)
    text, verdicts = tables(runs)
    (args.out / "tables.md").write_text(text)
    written = plots(runs, args.out)
    if args.doc and verdicts:
        write_verdicts(args.doc, verdicts)
    print(f"wrote {args.out / 'tables.md'}, {args.out / SNAPSHOT} and {len(written)} plots")


if __name__ == "__main__":
    main()
