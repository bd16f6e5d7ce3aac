"""Tables and plots of the reproduction study, regenerated from its MLflow runs.

    .venv/bin/python study/report.py                    # runs/study → docs/reproduction/

`study.json` (written by `study/reproduce.py`) says which MLflow run is which row, split and
beam; every number in the tables is read back from those runs in the study's MLflow store.
Writes `tables.md` (one table per claim, with run ids) and the plots beside it.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


class StudyRuns:
    """The study's evaluations and trainings with their metrics as MLflow holds them."""

    def __init__(self, study_dir: Path):
        self.study = json.loads((study_dir / "study.json").read_text())
        self.client = MlflowClient(f"sqlite:///{study_dir.resolve()}/mlflow.db")
        self.run = functools.cache(self.client.get_run)  # every table cell asks again; the runs are finished
        self.trained, self.evaluated = self.study["trained"], self.study["evaluated"]
        self.best = self.study["ensemble_row"]

    def entry(self, label: str, split: str, beam: int) -> dict | None:
        return self.evaluated.get(f"{label}|{split}|beam{beam}")

    def metrics(self, label: str, split: str, beam: int) -> dict[str, float]:
        entry = self.entry(label, split, beam)
        return {} if entry is None else self.run(entry["mlflow_run_id"]).data.metrics

    def score(self, label: str, split: str, beam: int, metric: str) -> float | None:
        name = {"bleu": f"{split}/bleu", "chrf": f"{split}/chrf", "ppl": f"{split}/ppl"}.get(metric, metric)
        return self.metrics(label, split, beam).get(name)

    def param(self, name: str, key: str) -> str:
        return self.run(self.trained[name]["mlflow_run_id"]).data.params[key]

    def valid_curve(self, name: str) -> list[tuple[int, float]]:
        history = self.client.get_metric_history(self.trained[name]["mlflow_run_id"], "valid/ppl")
        return sorted((m.step, m.value) for m in history)

    def singles(self) -> list[str]:
        return [name for name in self.trained if "-seed" not in name]

    def depth_rows(self) -> list[str]:
        """The reversed single models, shallow to deep (claim 2)."""
        reversed_rows = [n for n in self.singles() if self.param(n, "data.reverse_source") == "True"]
        return sorted(reversed_rows, key=lambda n: int(self.param(n, "model.num_layers")))

    def splits(self) -> list[str]:
        return list(dict.fromkeys(e["split"] for e in self.evaluated.values()))

    def beams(self, label: str, split: str) -> list[int]:
        return sorted(e["beam"] for e in self.evaluated.values() if e["label"] == label and e["split"] == split)

    def top(self) -> int:
        return max(e["beam"] for e in self.evaluated.values())

    def swept_splits(self) -> list[str]:
        """Splits where the best single model was decoded at more than one beam (claim 3)."""
        return [s for s in self.splits() if len(self.beams(self.best, s)) > 1]


def fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def bounds(bin_: dict) -> str:
    return f"{float(bin_['low']):.0f}–{float(bin_['high']):.0f}"


def tables(runs: StudyRuns) -> str:
    """docs/REPRODUCTION.md's tables, claim by claim, then the MLflow runs and the commands."""
    splits, top = runs.splits(), runs.top()
    ensemble = runs.entry("ensemble", splits[0], top)
    members = ensemble["members"] if ensemble else 1
    lines = [f"Study: {len(runs.trained)} trainings, {len(runs.evaluated)} evaluations. BLEU is sacreBLEU "
             f"({next(iter(runs.evaluated.values()))['signature']['bleu']}); perplexity is per reference word "
             f"and </s>, teacher-forced. Beam {top} unless stated. Every number below is read back from the "
             f"study's MLflow store, except BLEU by length/rarity and rescoring (study.json).", ""]
    for claims in (_reversal_and_depth, _beam_and_ensemble, _lengths_phrases_and_rescoring, _runs_and_commands):
        lines += claims(runs, splits, top, members)
    return "\n".join(lines) + "\n"


def _reversal_and_depth(runs: StudyRuns, splits: list[str], top: int, members: int) -> list[str]:
    lines = ["## Claims 1 and 2: reversal and depth (single models)", "",
             "| model | source | layers | valid ppl | " + " | ".join(f"{s} ppl | {s} BLEU" for s in splits) + " |",
             "|---|---|---:|---:|" + "---:|---:|" * len(splits)]
    for name in runs.singles():
        reading = "reversed" if runs.param(name, "data.reverse_source") == "True" else "forward"
        cells = [f"{fmt(runs.score(name, s, top, 'ppl'))} | {fmt(runs.score(name, s, top, 'bleu'))}" for s in splits]
        lines.append(f"| {name} | {reading} | {runs.param(name, 'model.num_layers')} | "
                     f"{fmt(runs.trained[name]['valid_ppl'])} | " + " | ".join(cells) + " |")
    depth = runs.depth_rows()
    lines += ["", "Perplexity change per added depth step (reversed models):", "",
              "| from → to | valid | " + " | ".join(splits) + " |", "|---|---:|" + "---:|" * len(splits)]
    for shallow, deep in zip(depth, depth[1:]):
        change = [_change(runs.trained[shallow]["valid_ppl"], runs.trained[deep]["valid_ppl"])]
        change += [_change(runs.score(shallow, s, top, "ppl"), runs.score(deep, s, top, "ppl")) for s in splits]
        lines.append(f"| {runs.param(shallow, 'model.num_layers')} → {runs.param(deep, 'model.num_layers')} layers | "
                     + " | ".join(change) + " |")
    return lines


def _beam_and_ensemble(runs: StudyRuns, splits: list[str], top: int, members: int) -> list[str]:
    best = runs.best
    lines = ["", f"## Claim 3: beam size ({best}, and the ensemble of {members})", ""]
    for split in runs.swept_splits():
        beams = runs.beams(best, split)
        lines += [f"{split}:", "", "| model | " + " | ".join(f"beam {b}" for b in beams) + " |",
                  "|---|" + "---:|" * len(beams)]
        for label in (best, "ensemble"):
            lines.append(f"| {label} | " + " | ".join(fmt(runs.score(label, split, b, "bleu")) for b in beams) + " |")
        lines.append("")
    lines += [f"## Claim 4: an ensemble of {members} ({best} and the same config with other seeds)", "",
              "| split | single BLEU | ensemble BLEU | single ppl | ensemble ppl |", "|---|---:|---:|---:|---:|"]
    for split in splits:
        lines.append(f"| {split} | {fmt(runs.score(best, split, top, 'bleu'))} | "
                     f"{fmt(runs.score('ensemble', split, top, 'bleu'))} | "
                     f"{fmt(runs.score(best, split, top, 'ppl'))} | "
                     f"{fmt(runs.score('ensemble', split, top, 'ppl'))} |")
    return lines


def _lengths_phrases_and_rescoring(runs: StudyRuns, splits: list[str], top: int, members: int) -> list[str]:
    lines = ["", f"## Claim 5: BLEU by source length and by word rarity (beam {top}; bins: BLEU (sentences))", ""]
    for split in splits:
        for label in (runs.best, "ensemble"):
            entry = runs.entry(label, split, top)
            for kind in ("length", "rarity") if entry is not None else ():
                lines.append(f"- {split}, {label}, by {kind}: " + ", ".join(
                    f"{bounds(b)}: {fmt(b['bleu'])} ({b['sentences']})" for b in entry[f"bleu_by_{kind}"]))
    lines += ["", "## Claim 6: do sentence vectors group by meaning? (Figure 2's 12 phrases)", "",
              "Share of phrases whose nearest other phrase (same set of 6) means the same (chance 0.40), and the mean "
              "distance between meanings over the mean within one (> 1: meaning outweighs shared words).", "",
              "| model | nearest means the same | between / within |", "|---|---:|---:|"]
    for label in [*runs.singles(), "ensemble"]:
        lines.append(f"| {label} | {fmt(runs.score(label, splits[0], top, 'phrases/nearest_same_meaning'))} | "
                     f"{fmt(runs.score(label, splits[0], top, 'phrases/between_over_within'))} |")
    lines += ["", "## Claim 7: rescoring a weak model's n-best lists", "",
              "| split | first pass | BLEU | rescored by | BLEU | n-best | weight |",
              "|---|---|---:|---|---:|---:|---:|"]
    for split, r in runs.study.get("rescored", {}).items():
        lines.append(f"| {split} | {r['first_pass_row']} | {fmt(r['first_pass'])} | {r['rescorer_row']} | "
                     f"{fmt(r['rescored'])} | {r['nbest']} | {r['weight']} |")
    return lines


def _runs_and_commands(runs: StudyRuns, splits: list[str], top: int, members: int) -> list[str]:
    lines = ["", "## MLflow runs", "", "| what | run id |", "|---|---|"]
    lines += [f"| train {name} | {t['mlflow_run_id']} |" for name, t in runs.trained.items()]
    lines += [f"| evaluate {e['label']} {e['split']} beam {e['beam']} | {e['mlflow_run_id']} |"
              for e in runs.evaluated.values()]
    lines += ["", "## Commands, in the order they ran (minutes)", "", "```"]
    lines += [f"{c['command'].replace(str(REPO) + '/', '')}    # {c['seconds'] / 60:.1f}"
              for c in runs.study.get("commands", [])]
    return lines + ["```"]


def _change(before: float | None, after: float | None) -> str:
    return "–" if before is None or after is None else f"{100 * (after - before) / before:+.1f}%"


def plots(runs: StudyRuns, out: Path) -> list[Path]:
    splits, top, best = runs.splits(), runs.top(), runs.best
    written = []

    swept = runs.swept_splits()
    if swept:
        figure, axes = plt.subplots(1, len(swept), figsize=(4 * len(swept), 3.2), squeeze=False)
        for axis, split in zip(axes[0], swept):
            for label in (best, "ensemble"):
                beams = runs.beams(label, split)
                axis.plot(beams, [runs.score(label, split, b, "bleu") for b in beams], marker="o", label=label)
            beams = runs.beams(best, split)
            axis.set(title=split, xlabel="beam size", ylabel="BLEU", xscale="log", xticks=beams, xticklabels=beams)
            axis.legend(fontsize=7)
        written.append(save_figure(figure, out / "bleu_vs_beam.png"))

    figure, axis = plt.subplots(figsize=(5.5, 3.8))
    for name in runs.trained:
        curve = runs.valid_curve(name)
        if curve:
            steps, values = zip(*curve)
            seed = "-seed" in name
            axis.plot(steps, values, marker="" if seed else ".", linestyle=":" if seed else "-",
                      linewidth=0.8 if seed else 1.5, label=name)
    axis.set(xlabel="step", ylabel="valid perplexity", yscale="log", title="validation perplexity")
    axis.legend(fontsize=6)
    written.append(save_figure(figure, out / "valid_ppl.png"))

    depth = runs.depth_rows()
    layers = [int(runs.param(n, "model.num_layers")) for n in depth]
    figure, axis = plt.subplots(figsize=(4.5, 3.5))
    axis.plot(layers, [runs.trained[n]["valid_ppl"] for n in depth], marker="o", label="valid")
    for split in splits:
        axis.plot(layers, [runs.score(n, split, top, "ppl") for n in depth], marker="o", label=split)
    axis.set(xlabel="LSTM layers (encoder and decoder)", ylabel="perplexity", xticks=layers,
             title="perplexity vs depth (reversed source)")
    axis.legend(fontsize=7)
    written.append(save_figure(figure, out / "ppl_vs_depth.png"))

    axis_labels = {"length": "source sentence length (words)", "rarity": "mean frequency rank of source words"}
    for kind, xlabel in axis_labels.items():
        figure, axes = plt.subplots(1, len(splits), figsize=(4.2 * len(splits), 3.4), squeeze=False)
        for axis, split in zip(axes[0], splits):
            for label in [*runs.singles(), "ensemble"]:
                entry = runs.entry(label, split, top)
                if entry and entry[f"bleu_by_{kind}"]:
                    bins = entry[f"bleu_by_{kind}"]
                    axis.plot(range(len(bins)), [b["bleu"] for b in bins], marker="o", label=label)
                    axis.set_xticks(range(len(bins)), [bounds(b) for b in bins], rotation=45, fontsize=7)
            axis.set(title=split, xlabel=xlabel, ylabel="BLEU")
            axis.legend(fontsize=6)
        written.append(save_figure(figure, out / f"bleu_by_{kind}.png"))

    for label, name in ((best, "sentence_pca.png"), ("ensemble", "sentence_pca_ensemble.png")):
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study-dir", type=Path, default=REPO / "runs" / "study")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "reproduction")
    args = parser.parse_args()
    runs = StudyRuns(args.study_dir)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tables.md").write_text(tables(runs))
    written = plots(runs, args.out)
    print(f"wrote {args.out / 'tables.md'} and {len(written)} plots")


if __name__ == "__main__":
    main()
