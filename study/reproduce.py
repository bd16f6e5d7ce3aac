"""Run a reproduction study (configs/experiments/trained/study.yaml) with the project's own commands.

    .venv/bin/python study/reproduce.py --study configs/experiments/trained/study.yaml   # hours on 2 CPU cores
    .venv/bin/python study/reproduce.py --study S.yaml --set train.max_steps=20 ...

Every step is a `dist-s2s` subprocess (train, evaluate, translate --nbest, rescore), tracked in
MLflow as those commands track themselves. Steps whose result file exists are skipped and an
interrupted training resumes from its checkpoint, so rerunning after a crash picks up where it
stopped. Everything lands in `<run_dir>/study.json` (scores, perplexities, MLflow run ids,
commands); `study/report.py` turns that into tables and plots.

`--parallel N` trains N rows at a time, each on cores ÷ N threads (evaluations stay one at a time, on
every core). On a 2-core machine two one-thread trainings side by side do 1.25 × the work of one
two-thread training (the study's 4-layer rows): the LSTM's matrix products are too small for a second
thread to pay in full.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from sacrebleu.metrics import BLEU

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dist_s2s.config import load_config  # noqa: E402
from dist_s2s.decode.rescore import read_nbest  # noqa: E402
from dist_s2s.evaluate.evaluate import split_rows  # noqa: E402
from dist_s2s.train.checkpoint import CheckpointDir, step_of  # noqa: E402
from dist_s2s.train.tracking import UNSENT_FILE  # noqa: E402


@dataclass
class Rescoring:
    first_pass: str
    rescorer: str  # a row, or "best": the depth row with the lowest valid ppl (the ensemble's row)
    nbest: int = 12
    weight: float = 0.5
    splits: list[str] = field(default_factory=list)
    weight_grid: list[float] = field(default_factory=list)
    """When given, the weight is the grid's best on `choose_on` (BLEU), not `weight`."""
    choose_on: str = "valid"


@dataclass
class LongSentences:
    """Rows trained on data with long sentences (news), each evaluated on `splits` at the top beam."""

    rows: list[str]
    splits: list[str]


@dataclass
class BeamSweep:
    beams: list[int]
    splits: list[str]


@dataclass
class Study:
    folder: Path
    run_dir: Path
    rows: list[str]
    depth_rows: list[str]
    ensemble_seeds: list[int]
    splits: list[str]
    beam_sweep: BeamSweep
    rescore: Rescoring
    reference: str | None = None
    """The row every comparison is made against; None: the depth row with the lowest valid ppl."""
    average_last: int = 0
    """Average the reference's last N checkpoints (`dist-s2s average`) and evaluate the result (0: not)."""
    long_sentences: LongSentences | None = None
    reversal_pairs: list[list[str]] = field(default_factory=list)
    """[forward, reversed] rows compared for claim 1; none: each depth row with the forward row of its depth."""
    superseded: dict[str, str] = field(default_factory=dict)
    """Rows trained earlier and replaced (a plan change), each with its reason: reported, not counted."""

    @classmethod
    def load(cls, path: Path) -> Study:
        raw = yaml.safe_load(path.read_text())
        required = {"run_dir", "rows", "depth_rows", "ensemble_seeds", "splits", "beam_sweep", "rescore"}
        optional = {"reference", "average_last", "long_sentences", "reversal_pairs", "superseded"}
        if unknown := set(raw) - required - optional:
            raise SystemExit(f"{path}: unknown study key {sorted(unknown)[0]}")
        if missing := required - set(raw):
            raise SystemExit(f"{path}: missing study key {sorted(missing)[0]}")
        long = raw.get("long_sentences")
        named = [*raw["depth_rows"], *(row for pair in raw.get("reversal_pairs", []) for row in pair)]
        if raw.get("reference"):
            named.append(raw["reference"])
        if stray := [row for row in named if row not in raw["rows"]]:
            raise SystemExit(f"{path}: row {stray[0]} is compared but not in rows (it would never train)")
        if missing_config := [row for row in raw["rows"] if not (path.parent / f"{row}.yaml").is_file()]:
            raise SystemExit(f"{path}: row {missing_config[0]} has no config {path.parent / missing_config[0]}.yaml")
        return cls(folder=path.parent, run_dir=REPO / raw["run_dir"], rows=raw["rows"], depth_rows=raw["depth_rows"],
                   ensemble_seeds=raw["ensemble_seeds"], splits=raw["splits"],
                   beam_sweep=BeamSweep(**raw["beam_sweep"]), rescore=Rescoring(**raw["rescore"]),
                   reference=raw.get("reference"), average_last=raw.get("average_last", 0),
                   long_sentences=LongSentences(**long) if long else None,
                   reversal_pairs=raw.get("reversal_pairs", []), superseded=raw.get("superseded", {}))

    def config(self, row: str) -> Path:
        return self.folder / f"{row}.yaml"


class Runner:
    """Runs `dist-s2s` commands with the study's extra overrides, logging each one to study.json."""

    def __init__(self, study: Study, overrides: list[str]):
        # One MLflow store for the whole study (trainings and evaluations), unless one is named.
        if not any(o.startswith("--tracking.uri=") for o in overrides):
            overrides = [*overrides, f"--tracking.uri=sqlite:///{study.run_dir.resolve()}/mlflow.db"]
        self.study, self.overrides = study, overrides
        self.results_path = study.run_dir / "study.json"
        self.results = json.loads(self.results_path.read_text()) if self.results_path.is_file() else {}
        self.lock = threading.Lock()  # trainings side by side (--parallel) record their results one at a time

    def save(self) -> None:
        with self.lock:
            self.study.run_dir.mkdir(parents=True, exist_ok=True)
            self.results_path.write_text(json.dumps(self.results, indent=2) + "\n")

    def command(self, *arguments: str, threads: int | None = None) -> None:
        """One `dist-s2s` command; `threads`: its torch threads (default: every core)."""
        command = [sys.executable, "-m", "dist_s2s", *arguments, *self.overrides]
        env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
        print("$ dist-s2s " + " ".join(arguments) + (f"    # {threads} thread(s)" if threads else ""), flush=True)
        started, wall = time.perf_counter(), time.time()
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env)
        if result.returncode != 0:
            raise SystemExit(f"failed ({result.returncode}): {' '.join(command)}\n{result.stderr[-3000:]}")
        with self.lock:
            self.results.setdefault("commands", []).append(
                {"command": "dist-s2s " + " ".join([*arguments, *self.overrides]), "started": round(wall, 1),
                 "seconds": round(time.perf_counter() - started, 1), **({"threads": threads} if threads else {})})

    def train_all(self, jobs: list[tuple[str, int | None]], parallel: int) -> list[dict]:
        """Trainings `parallel` at a time, each on cores ÷ parallel threads, in the order given."""
        if parallel <= 1:
            return [self.train(row, seed) for row, seed in jobs]
        threads = max(1, (os.cpu_count() or parallel) // parallel)
        pool = ThreadPoolExecutor(max_workers=parallel)
        futures = [pool.submit(self.train, row, seed, threads) for row, seed in jobs]
        try:
            return [future.result() for future in futures]
        finally:  # a failure stops here: what runs finishes, what waits is not started
            pool.shutdown(wait=True, cancel_futures=True)

    def train(self, row: str, seed: int | None = None, threads: int | None = None) -> dict:
        """A row's training run (resumed if interrupted); its valid ppl, checkpoint and MLflow run id."""
        name = row if seed is None else f"{row}-seed{seed}"
        trained = self.results.setdefault("trained", {})
        if name in trained:
            return trained[name]
        run_dir = self.study.run_dir / name
        extra = [f"--train.run_dir={run_dir}"] + ([f"--train.seed={seed}"] if seed is not None else [])
        if (run_dir / "checkpoints" / "index.json").is_file():
            extra.append("--train.resume=true")
        self.command("train", "--config", str(self.study.config(row)), *extra, threads=threads)
        if (run_dir / UNSENT_FILE).is_file():  # metrics MLflow missed (a busy store): sent before they are read
            self.command("sync", "--config", str(self.study.config(row)), f"--train.run_dir={run_dir}")
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        valid = [r for r in records if "valid/ppl" in r]
        checkpoints = CheckpointDir(run_dir / "checkpoints", 1)
        chosen = checkpoints.best() or checkpoints.latest()  # the best by valid ppl when kept
        at_step = {r["step"]: r["valid/ppl"] for r in valid}
        entry = {
            "row": row, "seed": seed, "run_dir": str(run_dir),
            "checkpoint": str(chosen), "latest_checkpoint": str(checkpoints.latest()),
            "mlflow_run_id": (run_dir / "mlflow_run_id").read_text().strip(),
            "valid_ppl": at_step.get(step_of(chosen), valid[-1]["valid/ppl"]),  # the chosen checkpoint's
            "last_valid_ppl": valid[-1]["valid/ppl"], "valid_ppl_curve": [[r["step"], r["valid/ppl"]] for r in valid],
            "train_ppl_curve": [[r["step"], r["train/ppl"]] for r in records if "train/ppl" in r],
        }
        with self.lock:
            trained[name] = entry
        self.save()
        return entry

    def evaluate(self, label: str, row: str, checkpoints: list[str], *, split: str, beam: int) -> dict:
        key = f"{label}|{split}|beam{beam}"
        evaluated = self.results.setdefault("evaluated", {})
        if key in evaluated:
            return evaluated[key]
        out = self.study.run_dir / "eval" / f"{label}-{split}-beam{beam}.json"
        report_dir = self.study.run_dir / "eval" / label
        self.command("evaluate", "--config", str(self.study.config(row)), "--checkpoint", *checkpoints,
                     "--split", split, "--beam", str(beam), "--output", str(out), f"--train.run_dir={report_dir}")
        scores = json.loads(out.read_text())
        evaluated[key] = {"label": label, "split": split, "beam": beam, "members": len(checkpoints),
                          **{k: scores[k] for k in ("bleu", "chrf", "perplexity", "length_ratio", "sentences",
                                                    "signature", "bleu_by_length", "bleu_by_rarity",
                                                    "phrase_grouping", "mlflow_run_id", "report_dir")}}
        self.save()
        return evaluated[key]

    def average(self, row: str, last: int) -> dict:
        """The mean of the row's last `last` checkpoints (`dist-s2s average --last`), as a trained entry."""
        averaged = self.results.setdefault("averaged", {})
        if row in averaged:
            return averaged[row]
        run_dir = Path(self.results["trained"][row]["run_dir"])
        output = self.study.run_dir / "average" / f"{row}-last{last}.pt"
        output.parent.mkdir(parents=True, exist_ok=True)
        self.command("average", "--config", str(self.study.config(row)), f"--train.run_dir={run_dir}",
                     "--last", str(last), "--output", str(output))
        averaged[row] = {"row": row, "last": last, "checkpoint": str(output)}
        self.save()
        return averaged[row]

    def rescore(self, split: str, first_row: str, rescorer_row: str, weight: float | None = None) -> dict:
        done = self.results.setdefault("rescored", {})
        weight = self.study.rescore.weight if weight is None else weight
        fixed = weight == self.study.rescore.weight and not self.study.rescore.weight_grid
        key = split if fixed else f"{split}|{weight}"  # the first study's keys stay as they were
        if key in done:
            return done[key]
        spec, folder = self.study.rescore, self.study.run_dir / "rescore"
        first, rescorer = self.results["trained"][first_row], self.results["trained"][rescorer_row]
        folder.mkdir(parents=True, exist_ok=True)
        config = load_config(self.study.config(first_row), [o for o in self.overrides if o.startswith("--data.")])
        rows = split_rows(REPO / config.data.out_dir, split)
        sources, references = rows.column("src_text").to_pylist(), rows.column("tgt_text").to_pylist()
        (folder / f"{split}.src").write_text("".join(s + "\n" for s in sources), encoding="utf-8")
        nbest, rescored = folder / f"{split}.nbest", folder / f"{split}.rescored-{weight}.txt"
        if not nbest.is_file():
            self.command("translate", "--config", str(self.study.config(first_row)), "--checkpoint",
                         first["checkpoint"], "--input", str(folder / f"{split}.src"), "--beam", str(spec.nbest),
                         "--nbest", str(spec.nbest), "--output", str(nbest))
        self.command("rescore", "--config", str(self.study.config(rescorer_row)), "--checkpoint",
                     rescorer["checkpoint"], "--input", str(folder / f"{split}.src"), "--nbest", str(nbest),
                     "--weight", str(weight), "--output", str(rescored))
        first_best = {c.sentence: c.text for c in read_nbest(nbest) if c.position == 0}
        first_best_path = folder / f"{split}.first.txt"
        first_best_path.write_text("".join(first_best.get(i, "") + "\n" for i in range(len(sources))), encoding="utf-8")
        bleu = BLEU()
        scores = {name: round(bleu.corpus_score(path.read_text(encoding="utf-8").splitlines(), [references]).score, 2)
                  for name, path in (("first_pass", first_best_path), ("rescored", rescored))}
        done[key] = {**scores, "split": split, "first_pass_row": first_row, "rescorer_row": rescorer_row,
                     "nbest": spec.nbest, "weight": weight, "sentences": len(sources),
                     "signature": str(bleu.get_signature())}
        self.save()
        return done[key]


def run(study: Study, overrides: list[str], parallel: int = 1) -> dict:
    runner = Runner(study, overrides)
    long_rows = study.long_sentences.rows if study.long_sentences else []
    runner.results["layout"] = {  # what study/report.py needs to know of the plan, from the first training on
        "rows": study.rows, "depth_rows": study.depth_rows, "seeds": study.ensemble_seeds if study.reference else [],
        "long_rows": long_rows, "long_splits": study.long_sentences.splits if study.long_sentences else [],
        "reversal_pairs": study.reversal_pairs, "superseded": study.superseded}
    runner.save()
    if study.reference:  # every training is known from the plan: all of them side by side as --parallel allows
        done = runner.train_all([(row, None) for row in study.rows]
                                + [(study.reference, seed) for seed in study.ensemble_seeds]
                                + [(row, None) for row in long_rows], parallel)
        trained = dict(zip(study.rows, done))
    else:  # the seeds' row is chosen on the rows' valid perplexity: they train first
        trained = dict(zip(study.rows, runner.train_all([(row, None) for row in study.rows], parallel)))
    # the reference: named by the plan, or the depth row with the lowest valid ppl (selection on valid only)
    best = study.reference or min(study.depth_rows, key=lambda row: trained[row]["valid_ppl"])
    runner.results["ensemble_row"] = best
    seeds = runner.train_all([(best, seed) for seed in study.ensemble_seeds], parallel)
    members = [trained[best], *seeds]
    ensemble = [m["checkpoint"] for m in members]
    averaged = runner.average(best, study.average_last) if study.average_last else None
    top = max(study.beam_sweep.beams)
    for split in study.splits:  # every row and the ensemble at the largest beam (claims 1, 2, 4, 5, 6)
        for row in study.rows:
            runner.evaluate(row, row, [trained[row]["checkpoint"]], split=split, beam=top)
        runner.evaluate("ensemble", best, ensemble, split=split, beam=top)
        if study.reference:  # each member alone: the seed spread, the mean and the best member (claims 1, 4)
            for seed, member in zip(study.ensemble_seeds, seeds):
                runner.evaluate(f"{best}-seed{seed}", best, [member["checkpoint"]], split=split, beam=top)
        if averaged:
            runner.evaluate(f"{best}-average{study.average_last}", best, [averaged["checkpoint"]], split=split,
                            beam=top)
    for split in study.beam_sweep.splits:  # the smaller beams: the best single row and the ensemble (claim 3)
        for beam in study.beam_sweep.beams:
            runner.evaluate(best, best, [trained[best]["checkpoint"]], split=split, beam=beam)
            runner.evaluate("ensemble", best, ensemble, split=split, beam=beam)
    rescorer = best if study.rescore.rescorer == "best" else study.rescore.rescorer
    weight = None
    if study.rescore.weight_grid:  # the interpolation weight chosen on valid BLEU
        tried = {w: runner.rescore(study.rescore.choose_on, study.rescore.first_pass, rescorer, w)["rescored"]
                 for w in study.rescore.weight_grid}
        weight = max(tried, key=lambda w: (tried[w], -w))
        runner.results["rescore_weight"] = {"chosen": weight, "on": study.rescore.choose_on,
                                            "valid_bleu": {str(w): b for w, b in tried.items()}}
    for split in study.rescore.splits:
        runner.rescore(split, study.rescore.first_pass, rescorer, weight)
    if study.long_sentences:  # claims 5 and 1 on news
        for news in runner.train_all([(row, None) for row in long_rows], parallel):
            row = news["row"]
            for split in study.long_sentences.splits:
                runner.evaluate(row, row, [news["checkpoint"]], split=split, beam=top)
    runner.save()
    return runner.results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", type=Path, default=REPO / "configs" / "experiments" / "trained" / "study.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for every command of the study (e.g. data.root=...)")
    parser.add_argument("--parallel", type=int, default=1, metavar="N",
                        help="train N rows at a time, each on cores ÷ N threads (default 1: one at a time)")
    args = parser.parse_args()
    if args.parallel < 1:
        parser.error(f"--parallel {args.parallel}: at least 1")
    study = Study.load(args.study.resolve())
    results = run(study, [f"--{item}" for item in args.set], args.parallel)
    print(f"study done: {len(results['trained'])} trainings, {len(results['evaluated'])} evaluations → "
          f"{study.run_dir / 'study.json'}")


if __name__ == "__main__":
    main()
