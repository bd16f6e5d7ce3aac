"""Run a reproduction study (configs/experiments/trained/study.yaml) with the project's own commands.

    .venv/bin/python study/reproduce.py --study configs/experiments/trained/study.yaml   # hours on 2 CPU cores
    .venv/bin/python study/reproduce.py --study S.yaml --set train.max_steps=20 ...

Every step is a `dist-s2s` subprocess (train, evaluate, translate --nbest, rescore), tracked in
MLflow as those commands track themselves. Steps whose result file exists are skipped and an
interrupted training resumes from its checkpoint, so rerunning after a crash picks up where it
stopped. Everything lands in `<run_dir>/study.json` (scores, perplexities, MLflow run ids,
commands); `study/report.py` turns that into tables and plots.

`--parallel N` runs N steps at a time (trainings and evaluations alike), each on cores ÷ N threads, in
the plan's order: a step starts as soon as a worker is free and the steps it needs have ended, so the
evaluations of the rows already trained fill the time the last trainings leave. On a 2-core machine
two one-thread trainings side by side do 1.25 × the work of one two-thread training (the study's
4-layer rows): the LSTM's matrix products are too small for a second thread to pay in full.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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

    def __init__(self, study: Study, overrides: list[str], parallel: int = 1):
        # One MLflow store for the whole study (trainings and evaluations), unless one is named.
        if not any(o.startswith("--tracking.uri=") for o in overrides):
            overrides = [*overrides, f"--tracking.uri=sqlite:///{study.run_dir.resolve()}/mlflow.db"]
        self.study, self.overrides = study, overrides
        self.results_path = study.run_dir / "study.json"
        self.results = json.loads(self.results_path.read_text()) if self.results_path.is_file() else {}
        self.lock = threading.Lock()  # steps side by side (--parallel) record their results one at a time
        self.threads = max(1, (os.cpu_count() or parallel) // parallel) if parallel > 1 else None
        """Each command's torch threads: the cores shared by the steps side by side (None: every core)."""

    def save(self) -> None:
        with self.lock:
            self.study.run_dir.mkdir(parents=True, exist_ok=True)
            self.results_path.write_text(json.dumps(self.results, indent=2) + "\n")

    def done(self, section: str, key: str) -> dict | None:
        with self.lock:
            return self.results.get(section, {}).get(key)

    def note(self, key: str, value: Any) -> None:
        """A study-wide fact (the layout, the reference, the chosen weight, the end) set and written at once."""
        with self.lock:
            self.results[key] = value
        self.save()

    def record(self, section: str, key: str, entry: dict) -> dict:
        """`entry` as results[section][key], written to study.json at once (a crash keeps it)."""
        with self.lock:
            self.results.setdefault(section, {})[key] = entry
        self.save()
        return entry

    def command(self, *arguments: str) -> None:
        """One `dist-s2s` command on the runner's share of the cores."""
        threads = self.threads
        command = [sys.executable, "-m", "dist_s2s", *arguments, *self.overrides]
        env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
        with self.lock:  # one line per command, not two threads' lines run together
            print("$ dist-s2s " + " ".join(arguments) + (f"    # {threads} thread(s)" if threads else ""), flush=True)
        started, wall = time.perf_counter(), time.time()
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env)
        if result.returncode != 0:
            raise SystemExit(f"failed ({result.returncode}): {' '.join(command)}\n{result.stderr[-3000:]}")
        with self.lock:
            self.results.setdefault("commands", []).append(
                {"command": "dist-s2s " + " ".join([*arguments, *self.overrides]), "started": round(wall, 1),
                 "seconds": round(time.perf_counter() - started, 1), **({"threads": threads} if threads else {})})

    def train(self, row: str, seed: int | None = None) -> dict:
        """A row's training run (resumed if interrupted); its valid ppl, checkpoint and MLflow run id."""
        name = row if seed is None else f"{row}-seed{seed}"
        if entry := self.done("trained", name):
            return entry
        run_dir = self.study.run_dir / name
        extra = [f"--train.run_dir={run_dir}"] + ([f"--train.seed={seed}"] if seed is not None else [])
        if (run_dir / "checkpoints" / "index.json").is_file():
            extra.append("--train.resume=true")
        self.command("train", "--config", str(self.study.config(row)), *extra)
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
        return self.record("trained", name, entry)

    def evaluate(self, label: str, row: str, checkpoints: list[str], *, split: str, beam: int) -> dict:
        key = f"{label}|{split}|beam{beam}"
        if entry := self.done("evaluated", key):
            return entry
        out = self.study.run_dir / "eval" / f"{label}-{split}-beam{beam}.json"
        report_dir = self.study.run_dir / "eval" / label
        self.command("evaluate", "--config", str(self.study.config(row)), "--checkpoint", *checkpoints,
                     "--split", split, "--beam", str(beam), "--output", str(out), f"--train.run_dir={report_dir}")
        scores = json.loads(out.read_text())
        return self.record("evaluated", key, {
            "label": label, "split": split, "beam": beam, "members": len(checkpoints),
            **{k: scores[k] for k in ("bleu", "chrf", "perplexity", "length_ratio", "sentences", "signature",
                                      "bleu_by_length", "bleu_by_rarity", "phrase_grouping", "mlflow_run_id",
                                      "report_dir")}})

    def average(self, row: str, last: int) -> dict:
        """The mean of the row's last `last` checkpoints (`dist-s2s average --last`), as a trained entry."""
        if entry := self.done("averaged", row):
            return entry
        run_dir = Path(self.done("trained", row)["run_dir"])
        output = self.study.run_dir / "average" / f"{row}-last{last}.pt"
        output.parent.mkdir(parents=True, exist_ok=True)
        self.command("average", "--config", str(self.study.config(row)), f"--train.run_dir={run_dir}",
                     "--last", str(last), "--output", str(output))
        return self.record("averaged", row, {"row": row, "last": last, "checkpoint": str(output)})

    def rescore(self, split: str, first_row: str, rescorer_row: str, weight: float | None = None) -> dict:
        weight = self.study.rescore.weight if weight is None else weight
        fixed = weight == self.study.rescore.weight and not self.study.rescore.weight_grid
        key = split if fixed else f"{split}|{weight}"  # the first study's keys stay as they were
        if entry := self.done("rescored", key):
            return entry
        spec, folder = self.study.rescore, self.study.run_dir / "rescore"
        first, rescorer = self.done("trained", first_row), self.done("trained", rescorer_row)
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
        return self.record("rescored", key, {
            **scores, "split": split, "first_pass_row": first_row, "rescorer_row": rescorer_row, "nbest": spec.nbest,
            "weight": weight, "sentences": len(sources), "signature": str(bleu.get_signature())})


@dataclass
class Step:
    run: Callable[[], Any]
    needs: list[Future]
    result: Future


class Steps:
    """The study's steps, `parallel` at a time: a free worker takes the first step, in the order added, whose
    needs have ended, so a step waiting for a training never holds a worker that an evaluation could use.

    The first failure stops the study: the steps running finish, the steps waiting never start, and the
    failure is raised when the block ends (`with Steps(n) as steps: ...` waits for every step).
    """

    def __init__(self, parallel: int):
        self.ready = threading.Condition()
        self.waiting: list[Step] = []
        self.once: dict[str, Future] = {}
        self.closed = False
        self.failure: BaseException | None = None
        self.workers = [threading.Thread(target=self._work, daemon=True) for _ in range(max(1, parallel))]
        for worker in self.workers:
            worker.start()

    def add(self, run: Callable[[], Any], *, needs: list[Future] = (), key: str | None = None) -> Future:
        """`run()` once `needs` have ended; a `key` added before returns that step's future (no double work)."""
        with self.ready:
            if key in self.once:
                return self.once[key]
            step = Step(run, list(needs), Future())
            self.waiting.append(step)
            if key is not None:
                self.once[key] = step.result
            self.ready.notify_all()
            return step.result

    def _next(self) -> Step | None:
        """The first waiting step whose needs have ended; None once the study is over or has failed."""
        with self.ready:
            while self.failure is None:
                if step := next((s for s in self.waiting if all(n.done() for n in s.needs)), None):
                    self.waiting.remove(step)
                    step.result.set_running_or_notify_cancel()
                    return step
                if self.closed and not self.waiting:
                    return None
                self.ready.wait()
            return None

    def _work(self) -> None:
        while step := self._next():
            try:
                step.result.set_result(step.run())
            except BaseException as error:  # re-raised by __exit__ in the main thread
                step.result.set_exception(error)
                with self.ready:
                    self.failure = self.failure or error
            with self.ready:
                self.ready.notify_all()

    def __enter__(self) -> Steps:
        return self

    def __exit__(self, error_type, error, traceback) -> None:
        with self.ready:
            self.closed = True
            if error is not None and self.failure is None:  # the plan itself failed: start nothing more
                self.failure = error
            self.ready.notify_all()
        for worker in self.workers:
            worker.join()
        for step in self.waiting:
            step.result.cancel()
        if self.failure is not None and self.failure is not error:
            raise self.failure


def run(study: Study, overrides: list[str], parallel: int = 1) -> dict:
    runner = Runner(study, overrides, parallel)
    long_rows = study.long_sentences.rows if study.long_sentences else []
    runner.note("finished", False)  # study/report.py judges the claims only once every step has run
    runner.note("layout", {  # what study/report.py needs to know of the plan, from the first training on
        "rows": study.rows, "depth_rows": study.depth_rows,
        "seeds": study.ensemble_seeds if study.reference else [], "long_rows": long_rows,
        "long_splits": study.long_sentences.splits if study.long_sentences else [],
        "reversal_pairs": study.reversal_pairs, "superseded": study.superseded})
    with Steps(parallel) as steps:
        def train(row: str, seed: int | None = None) -> Future:
            return steps.add(lambda: runner.train(row, seed))

        def evaluate(label: str, row: str, members: list[Future], *, split: str, beam: int) -> Future:
            return steps.add(lambda: runner.evaluate(label, row, [m.result()["checkpoint"] for m in members],
                                                     split=split, beam=beam),
                             needs=members, key=f"{label}|{split}|beam{beam}")

        trained = {row: train(row) for row in study.rows}
        # the reference: named by the plan, or the depth row with the lowest valid ppl (selection on valid only;
        # then the rows train before the seeds are known)
        best = study.reference or min(study.depth_rows, key=lambda row: trained[row].result()["valid_ppl"])
        runner.note("ensemble_row", best)
        seeds = [train(best, seed) for seed in study.ensemble_seeds]
        members = [trained[best], *seeds]
        averaged = steps.add(lambda: runner.average(best, study.average_last), needs=[trained[best]]) \
            if study.average_last else None
        top = max(study.beam_sweep.beams)
        for split in study.splits:  # every row at the largest beam (claims 1, 2, 5, 6), as soon as it is trained
            for row in study.rows:
                evaluate(row, row, [trained[row]], split=split, beam=top)
        for split in study.splits:  # the seeds, the ensemble and the average (claims 1, 4)
            if study.reference:  # each member alone: the seed spread, the mean and the best member
                for seed, member in zip(study.ensemble_seeds, seeds):
                    evaluate(f"{best}-seed{seed}", best, [member], split=split, beam=top)
            evaluate("ensemble", best, members, split=split, beam=top)
            if averaged:
                evaluate(f"{best}-average{study.average_last}", best, [averaged], split=split, beam=top)
        for split in study.beam_sweep.splits:  # the smaller beams: the best single row and the ensemble (claim 3)
            for beam in study.beam_sweep.beams:
                evaluate(best, best, [trained[best]], split=split, beam=beam)
                evaluate("ensemble", best, members, split=split, beam=beam)
        rescorer = best if study.rescore.rescorer == "best" else study.rescore.rescorer
        steps.add(lambda: rescore(runner, study, rescorer), needs=[trained[study.rescore.first_pass],
                                                                   trained[rescorer]])
        for row in long_rows:  # claims 5 and 1 on news
            news = train(row)
            for split in study.long_sentences.splits:
                evaluate(row, row, [news], split=split, beam=top)
    runner.note("finished", True)
    return runner.results


def rescore(runner: Runner, study: Study, rescorer: str) -> None:
    """Claim 7: the first pass's n-best lists rescored, the interpolation weight chosen on valid BLEU."""
    weight = None
    if study.rescore.weight_grid:
        tried = {w: runner.rescore(study.rescore.choose_on, study.rescore.first_pass, rescorer, w)["rescored"]
                 for w in study.rescore.weight_grid}
        weight = max(tried, key=lambda w: (tried[w], -w))
        runner.note("rescore_weight", {"chosen": weight, "on": study.rescore.choose_on,
                                       "valid_bleu": {str(w): b for w, b in tried.items()}})
    for split in study.rescore.splits:
        runner.rescore(split, study.rescore.first_pass, rescorer, weight)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", type=Path, default=REPO / "configs" / "experiments" / "trained" / "study.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for every command of the study (e.g. data.root=...)")
    parser.add_argument("--parallel", type=int, default=1, metavar="N",
                        help="run N steps (trainings, evaluations) at a time, each on cores ÷ N threads "
                             "(default 1: one at a time, on every core)")
    args = parser.parse_args()
    if args.parallel < 1:
        parser.error(f"--parallel {args.parallel}: at least 1")
    study = Study.load(args.study.resolve())
    results = run(study, [f"--{item}" for item in args.set], args.parallel)
    print(f"study done: {len(results['trained'])} trainings, {len(results['evaluated'])} evaluations → "
          f"{study.run_dir / 'study.json'}")


if __name__ == "__main__":
    main()
