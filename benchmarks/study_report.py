"""Tables and plots of the reproduction study, regenerated from its MLflow runs.

    .venv/bin/python benchmarks/study_report.py                    # runs/study → docs/reproduction/

`study.json` (written by `benchmarks/reproduce.py`) says which MLflow run is which row, split and
beam; every number in the tables is read back from those runs in the study's MLflow store.
Writes `tables.md` (one table per claim, with run ids) and the plots beside it.
"""

from __future__ import annotations

import argparse
import json
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

    def score(self, label: str, split: str, beam: int, metric: str) -> float | None:
        entry = self.study["evaluated"].get(f"{label}|{split}|beam{beam}")
        if entry is None:
            return None
        name = {"bleu": f"{split}/bleu", "chrf": f"{split}/chrf", "ppl": f"{split}/ppl"}[metric]
        return self.client.get_run(entry["mlflow_run_id"]).data.metrics[name]

    def run_id(self, label: str, split: str, beam: int) -> str:
        return self.study["evaluated"][f"{label}|{split}|beam{beam}"]["mlflow_run_id"]

    def valid_curve(self, name: str) -> list[tuple[int, float]]:
        history = self.client.get_metric_history(self.study["trained"][name]["mlflow_run_id"], "valid/ppl")
        return sorted((m.step, m.value) for m in history)

    def splits(self) -> list[str]:
        return list(dict.fromkeys(e["split"] for e in self.study["evaluated"].values()))

    def beams(self) -> list[int]:
        return sorted({e["beam"] for e in self.study["evaluated"].values()})


def fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def bounds(bin_: dict) -> str:
    return f"{float(bin_['low']):.0f}–{float(bin_['high']):.0f}"


def tables(runs: StudyRuns) -> str:
    splits, beams, top = runs.splits(), runs.beams(), max(runs.beams())
    trained, best = runs.study["trained"], runs.study["ensemble_row"]
    lines = [f"Study: {len(trained)} trainings, {len(runs.study['evaluated'])} evaluations; BLEU is sacreBLEU "
             f"({next(iter(runs.study['evaluated'].values()))['signature']['bleu']}), perplexity per reference word "
             f"and </s>. Beam {top} unless stated.", ""]

    lines += ["## Claims 1 and 2: reversal and depth (single models)", "",
              "| model | valid ppl | " + " | ".join(f"{s} ppl | {s} BLEU" for s in splits) + " |",
              "|---|---:|" + "---:|---:|" * len(splits)]
    singles = [name for name in trained if "-seed" not in name]
    for name in singles:
        cells = [f"{fmt(runs.score(name, s, top, 'ppl'))} | {fmt(runs.score(name, s, top, 'bleu'))}" for s in splits]
        lines.append(f"| {name} | {fmt(trained[name]['valid_ppl'])} | " + " | ".join(cells) + " |")

    lines += ["", f"## Claims 3 and 4: beam size, and an ensemble of {runs.study['evaluated'][f'ensemble|{splits[0]}|beam{top}']['members']} "
              f"({best} and its other seeds)", "",
              "| split | model | " + " | ".join(f"beam {b}" for b in beams) + " |", "|---|---|" + "---:|" * len(beams)]
    for split in splits:
        for label in (best, "ensemble"):
            lines.append(f"| {split} | {label} | " + " | ".join(fmt(runs.score(label, split, b, "bleu")) for b in beams)
                         + " |")

    lines += ["", f"## Claim 5: BLEU by source length and by word rarity ({best}, beam {top})", ""]
    for split in splits:
        entry = runs.study["evaluated"][f"{best}|{split}|beam{top}"]
        lines.append(f"- {split}, by length: " + ", ".join(f"{bounds(b)}: {fmt(b['bleu'])} ({b['sentences']})"
                                                         for b in entry["bleu_by_length"]))
        lines.append(f"- {split}, by rarity: " + ", ".join(f"{bounds(b)}: {fmt(b['bleu'])} ({b['sentences']})"
                                                         for b in entry["bleu_by_rarity"]))

    lines += ["", "## Claim 7: rescoring a weak model's n-best lists", "",
              "| split | first pass BLEU | rescored BLEU | n-best | weight |", "|---|---:|---:|---:|---:|"]
    for split, r in runs.study.get("rescored", {}).items():
        lines.append(f"| {split} | {fmt(r['first_pass'])} | {fmt(r['rescored'])} | {r['nbest']} | {r['weight']} |")

    lines += ["", "## MLflow runs", "", "| what | run id |", "|---|---|"]
    lines += [f"| train {name} | {t['mlflow_run_id']} |" for name, t in trained.items()]
    lines += [f"| evaluate {e['label']} {e['split']} beam {e['beam']} | {e['mlflow_run_id']} |"
              for e in runs.study["evaluated"].values()]
    return "\n".join(lines) + "\n"


def plots(runs: StudyRuns, out: Path) -> list[Path]:
    splits, beams, best = runs.splits(), runs.beams(), runs.study["ensemble_row"]
    written = []

    figure, axes = plt.subplots(1, len(splits), figsize=(4 * len(splits), 3.2), squeeze=False)
    for axis, split in zip(axes[0], splits):
        for label in (best, "ensemble"):
            axis.plot(beams, [runs.score(label, split, b, "bleu") for b in beams], marker="o", label=label)
        axis.set(title=split, xlabel="beam size", ylabel="BLEU", xscale="log", xticks=beams, xticklabels=beams)
        axis.legend(fontsize=7)
    written.append(_save(figure, out / "bleu_vs_beam.png"))

    figure, axis = plt.subplots(figsize=(5, 3.5))
    for name in runs.study["trained"]:
        if "-seed" not in name:
            steps, values = zip(*runs.valid_curve(name)) if runs.valid_curve(name) else ((), ())
            axis.plot(steps, values, marker=".", label=name)
    axis.set(xlabel="step", ylabel="valid perplexity", yscale="log", title="validation perplexity")
    axis.legend(fontsize=7)
    written.append(_save(figure, out / "valid_ppl.png"))

    top = max(beams)
    report = Path(runs.study["evaluated"][f"{best}|{splits[0]}|beam{top}"]["report_dir"])
    for name in ("bleu_by_length.png", "bleu_by_rarity.png", "sentence_pca.png"):
        if (report / name).is_file():
            shutil.copyfile(report / name, out / name)
            written.append(out / name)
    return written


def _save(figure, path: Path) -> Path:
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
