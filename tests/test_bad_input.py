"""Bad input, command by command: a one-line error naming the file, line or key (exit 2), or a
counted, reported filter (exit 0). Never a traceback, never a silent drop, never a hang.

Each row of CASES is one test: the command it is fed to, what is wrong, the input it builds, and
the outcome. Everything runs through the real command line (`dist_s2s.cli.main`).
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import REPO, free_port, write_corpus

from dist_s2s.cli import main

TINY = str(REPO / "configs" / "tiny.yaml")


@dataclass
class World:
    """What the cases build on: a scratch folder, the session's prepared data and trained tiny model."""

    tmp: Path
    args: list[str]        # --config TINY and the prepared data / trained run overrides
    checkpoint: str        # the trained model's latest checkpoint

    def corpus(self, src: bytes | str, tgt: bytes | str, *options: str) -> list[str]:
        """A one-split corpus `bad/train` under tmp; the prepare arguments that read it."""
        write_corpus(self.tmp / "raw", "bad/train", src, tgt)
        (self.tmp / "bad.yaml").write_text("data:\n  corpora: [{name: bad, splits: {train: bad/train}}]\n"
                                           "  src_vocab_size: 50\n  tgt_vocab_size: 50\n  max_len: 50\n")
        return ["prepare", "--config", str(self.tmp / "bad.yaml"), f"--data.root={self.tmp / 'raw'}",
                f"--data.out_dir={self.tmp / 'out'}", *options]

    def corpus_without_target(self) -> list[str]:
        arguments = self.corpus("a\n", "x\n")
        (self.tmp / "raw" / "bad" / "train.fr").unlink()
        return arguments

    def file(self, name: str, content: bytes | str) -> str:
        path = self.tmp / name
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return str(path)

    def changed_checkpoint(self, change: Callable[[dict], object]) -> str:
        state = torch.load(self.checkpoint, weights_only=True)
        change(state)
        torch.save(state, self.tmp / "changed.pt")
        return str(self.tmp / "changed.pt")

    def truncated_copy(self) -> str:
        data = Path(self.checkpoint).read_bytes()
        return self.file("truncated.pt", data[: len(data) // 2])

    def run_with_truncated_latest(self) -> list[str]:
        """A copy of the trained run whose latest checkpoint lost its second half."""
        run_dir = self.tmp / "run"
        shutil.copytree(Path(self.checkpoint).parent.parent, run_dir)
        latest = run_dir / "checkpoints" / Path(self.checkpoint).name
        latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])
        return ["train", *self.args, f"--train.run_dir={run_dir}", "--train.resume=true", "--train.max_steps=40"]

    def translate(self, *options: str, checkpoint: str | None = None) -> list[str]:
        return ["translate", *self.args, "--checkpoint", checkpoint or self.checkpoint, *options]


@dataclass
class Error:
    pattern: str
    """Regex the single `dist-s2s: error:` line must contain."""


@dataclass
class Counted:
    pattern: str
    """Regex the report or log must contain: what was filtered or kept aside, and how many."""


@dataclass
class Case:
    command: str
    bad_input: str
    build: Callable[[World], list[str]]
    outcome: Error | Counted

    @property
    def id(self) -> str:
        return f"{self.command}: {self.bad_input}"


def pickled(state: dict) -> None:
    state["extra"] = Path("not a tensor")  # any non-weights object: torch pickles it


def other_vocabulary(state: dict) -> None:
    state["compat"]["vocab.tgt_sha256"] = "0" * 64


LONG = b"word " * 20_000  # a 100k-character line
NBEST = "0 ||| un chien ||| LSTM0= -1.0 ||| -1.0\n0 ||| deux chiens\n"

CASES = [
    # command     bad input                          input built                                           outcome
    Case("prepare", "misaligned corpora", lambda w: w.corpus("a\nb\nc\n", "x\ny\n"),
         Error(r"misaligned corpus bad: .*train\.en has 3 lines but .*train\.fr has 2 lines")),
    Case("prepare", "a missing file", lambda w: w.corpus_without_target(),
         Error(r"input file not found: .*bad/train\.fr")),
    Case("prepare", "an empty file", lambda w: w.corpus("", ""), Error(r"input file is empty: .*train\.en")),
    Case("prepare", "invalid UTF-8", lambda w: w.corpus(b"A dog.\nBad \xff byte.\n", "Un chien.\nMauvais.\n"),
         Counted(r"2 in\s+1 kept\s+filtered: invalid_utf8 1")),
    Case("prepare", "invalid UTF-8, data.strict", lambda w: w.corpus(b"A dog.\nBad \xff.\n", "Un.\nDeux.\n",
                                                                      "--data.strict=true"),
         Error(r"bad/train\.en:2: invalid UTF-8")),
    Case("prepare", "CRLF and lone CR", lambda w: w.corpus(b"A dog.\r\nTwo\rparts.\n", "Un chien.\r\nDeux.\n"),
         Counted(r"2 in\s+2 kept.*\n.*normalized: crlf 2, lone_cr 1")),
    Case("prepare", "a line of 100k characters", lambda w: w.corpus(b"A dog.\n" + LONG + b"\n", "Un.\nmot\n"),
         Counted(r"2 in\s+1 kept\s+filtered: too_long 1")),
    Case("prepare", "only-whitespace lines", lambda w: w.corpus("A dog.\n  \t \nA cat.\n", "Un.\nDeux.\n   \n"),
         Counted(r"3 in\s+1 kept\s+filtered: (empty_source 1, empty_target 1|empty_target 1, empty_source 1)")),
    Case("config", "an unknown key", lambda w: ["prepare", "--config", TINY, "--data.bogus=1"],
         Error(r"unknown config key data\.bogus \(known in data: ")),
    Case("config", "a wrong type", lambda w: ["train", "--config", TINY, "--model.hidden_size=wide"],
         Error(r"config key model\.hidden_size must be int")),
    Case("config", "a zero size", lambda w: ["train", "--config", TINY, "--model.hidden_size=0"],
         Error(r"config key model\.hidden_size must be positive, got 0")),
    Case("config", "a negative size", lambda w: ["train", "--config", TINY, "--train.batch_size=-16"],
         Error(r"config key train\.batch_size must be positive, got -16")),
    Case("config", "a zero learning rate", lambda w: ["train", "--config", TINY, "--optim.lr=0"],
         Error(r"config key optim\.lr must be positive, got 0")),
    Case("config", "a negative learning rate", lambda w: ["train", "--config", TINY, "--optim.lr=-1"],
         Error(r"config key optim\.lr must be positive, got -1")),
    Case("config", "a negative length ratio", lambda w: ["evaluate", "--config", TINY, "--checkpoint", "x.pt",
                                                         "--eval.max_length_ratio=-0.5"],
         Error(r"config key eval\.max_length_ratio must be positive, got -0\.5")),
    Case("config", "a zero init range", lambda w: ["train", "--config", TINY, "--model.init_range=0"],
         Error(r"config key model\.init_range must be positive, got 0")),
    Case("config", "dropout of every value", lambda w: ["train", "--config", TINY, "--model.dropout=1"],
         Error(r"config key model\.dropout must be in \[0, 1\), got 1\.0")),
    Case("config", "an Adam beta of 1", lambda w: ["train", "--config", TINY, "--optim.optimizer=adam",
                                                   "--optim.adam_beta2=1"],
         Error(r"config key optim\.adam_beta2 must be in \[0, 1\), got 1\.0")),
    Case("config", "an unknown optimizer", lambda w: ["train", "--config", TINY, "--optim.optimizer=adagrad"],
         Error(r"config key optim\.optimizer must be one of")),
    Case("config", "a negative length penalty", lambda w: ["evaluate", "--config", TINY, "--checkpoint", "x.pt",
                                                          "--eval.length_penalty=-0.2"],
         Error(r"config key eval\.length_penalty must be >= 0, got -0\.2")),
    Case("config", "micro-batches under the wavefront", lambda w: ["train", "--config", TINY,
                                                                    "--parallel.micro_batches=2"],
         Error(r"config key parallel\.micro_batches=2: the wavefront schedule keeps the batch whole")),
    Case("config", "more co-located stages than layers", lambda w: ["train", "--config", TINY, "--parallel.stages=3",
                                                                    "--parallel.placement=colocated"],
         Error(r"config key parallel\.placement=colocated needs parallel\.stages=3 <= model\.num_layers")),
    Case("train", "stages × data ≠ world size", lambda w: ["train", *w.args, "--parallel.stages=2"],
         Error(r"parallel\.stages × parallel\.data = 2 × 1 = 2, but 3 processes were launched")),
    Case("train", "more stages than layers + shards", lambda w: ["train", *w.args, "--parallel.stages=5"],
         Error(r"parallel\.stages=5 exceeds the 4 units a stage can hold")),
    Case("train", "a truncated checkpoint", lambda w: w.run_with_truncated_latest(),
         Error(r"checkpoint .*step-\d+\.pt is corrupt: its sha256 differs")),
    Case("train", "an MLflow URI that does not answer",
         lambda w: ["train", *w.args, f"--train.run_dir={w.tmp / 'run'}", "--train.max_steps=2",
                    f"--tracking.uri=http://127.0.0.1:{free_port()}"],
         Counted(r"MLflow at http://127\.0\.0\.1:\d+ failed(.|\n)*\d+ metric records did not reach MLflow")),
    Case("translate", "a truncated checkpoint", lambda w: w.translate("--input", "/dev/null",
                                                                      checkpoint=w.truncated_copy()),
         Error(r"checkpoint .*truncated\.pt is corrupt or truncated")),
    Case("translate", "a checkpoint holding a pickled object",
         lambda w: w.translate("--input", "/dev/null", checkpoint=w.changed_checkpoint(pickled)),
         Error(r"changed\.pt holds pickled Python objects; refusing to load it")),
    Case("translate", "a checkpoint from another vocabulary",
         lambda w: w.translate("--input", "/dev/null", checkpoint=w.changed_checkpoint(other_vocabulary)),
         Error(r"changed\.pt does not fit this config: it was trained with vocab\.tgt_sha256='0+'")),
    Case("translate", "a missing checkpoint", lambda w: w.translate("--input", "/dev/null",
                                                                    checkpoint=str(w.tmp / "nope.pt")),
         Error(r"checkpoint not found: .*nope\.pt")),
    Case("translate", "a missing input file", lambda w: w.translate("--input", str(w.tmp / "absent.en")),
         Error(r"input file not found: .*absent\.en")),
    Case("translate", "invalid UTF-8", lambda w: w.translate("--input", w.file("src.en", b"A dog .\nA \xff cat .\n")),
         Error(r"src\.en:2: invalid UTF-8 at byte 2")),
    Case("translate", "empty and only-whitespace lines",
         lambda w: w.translate("--input", w.file("src.en", "A dog .\n\n  \t\n"), "--beam", "1"),
         Counted(r"translate: 3 lines \(2 empty → empty output\)")),
    Case("rescore", "a malformed n-best file",
         lambda w: ["rescore", *w.args, "--checkpoint", w.checkpoint, "--input", w.file("src.en", "A dog .\n"),
                    "--nbest", w.file("bad.nbest", NBEST)],
         Error(r"bad\.nbest:2: expected `id \|\|\| hypothesis \|\|\| features \|\|\| score`")),
    Case("evaluate", "a split that was not prepared",
         lambda w: ["evaluate", *w.args, "--checkpoint", w.checkpoint, "--split", "test2099"],
         Error(r"split 'test2099' is not prepared")),
    # An output that cannot be written: refused before any work (translate used to translate everything first).
    Case("translate", "an unwritable output",
         lambda w: w.translate("--input", w.file("src.en", "A dog .\n"), "--output", "/proc/nope/out.txt"),
         Error(r"--output /proc/nope/out\.txt: its directory /proc/nope cannot be written")),
    Case("evaluate", "an unwritable output",
         lambda w: ["evaluate", *w.args, "--checkpoint", w.checkpoint, "--output", "/proc/nope/scores.json"],
         Error(r"--output /proc/nope/scores\.json: its directory /proc/nope cannot be written")),
    Case("evaluate", "an unwritable run directory",
         lambda w: ["evaluate", *w.args, "--checkpoint", w.checkpoint, "--train.run_dir=/proc/nope/run"],
         Error(r"train\.run_dir \(the evaluation's report and MLflow run\) /proc/nope/run cannot be written")),
    Case("rescore", "an output that is a directory",
         lambda w: ["rescore", *w.args, "--checkpoint", w.checkpoint, "--input", w.file("src.en", "A dog .\n"),
                    "--nbest", w.file("ok.nbest", "0 ||| Un chien . ||| LSTM0= -1.0 ||| -1.0\n"), "--output",
                    str(w.tmp)],
         Error(r"--output .* is a directory, not a file")),
    Case("bench", "an unwritable output",
         lambda w: ["bench", *w.args, "--mode", "single", "--output", "/proc/nope/bench.json"],
         Error(r"--output /proc/nope/bench\.json: its directory /proc/nope cannot be written")),
    Case("prepare", "an unwritable data.out_dir",
         lambda w: [*w.corpus("a b\n", "c d\n")[:-1], "--data.out_dir=/proc/nope/data"],
         Error(r"data\.out_dir /proc/nope/data cannot be written")),
    Case("train", "an unwritable train.run_dir",
         lambda w: ["train", *w.args, "--train.run_dir=/proc/nope/run"],
         Error(r"train\.run_dir /proc/nope/run cannot be written")),
]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input(case: Case, ray_local, trained_tiny, tmp_path, capsys, caplog, monkeypatch):
    args, checkpoint, _ = trained_tiny
    caplog.set_level(logging.INFO)
    if "world size" in case.bad_input:  # as a launcher would start 3 processes
        monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.chdir(tmp_path)
    code = main(case.build(World(tmp_path, args, checkpoint)))
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    if isinstance(case.outcome, Error):
        errors = [line for line in captured.err.splitlines() if line.startswith("dist-s2s: error:")]
        assert code == 2 and len(errors) == 1, captured.err[-2000:]
        assert errors[0] == captured.err.strip().splitlines()[-1], "the error is the last word"
        assert re.search(case.outcome.pattern, errors[0]), errors[0]
    else:
        assert code == 0, captured.err[-2000:]
        said = captured.out + captured.err + caplog.text  # report on stdout, log lines (pytest holds them)
        assert re.search(case.outcome.pattern, said), said[-2000:]


def test_the_matrix_covers_every_command_and_at_least_15_cases():
    assert len(CASES) >= 15
    assert {case.command for case in CASES} >= {"prepare", "train", "translate", "evaluate", "rescore", "config"}



def test_a_sentencepiece_model_that_does_not_match_its_manifest_is_one_line(prepared_tiny_subwords, trained_tiny,
                                                                          tmp_path, capsys):
    """The prepared subword data copied, its target model replaced by the source's: translate refuses it."""
    out_dir = tmp_path / "data"
    shutil.copytree(prepared_tiny_subwords.data.out_dir, out_dir)
    shutil.copy(out_dir / "spm.en.model", out_dir / "spm.fr.model")
    args, checkpoint, _ = trained_tiny
    code = main(["translate", "--config", TINY, f"--data.out_dir={out_dir}", "--checkpoint", checkpoint,
                 "--input", "/dev/null"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert re.search(r"^dist-s2s: error: SentencePiece model .*spm\.fr\.model does not match its manifest "
                     r"\(sha256 differs\)", err.strip().splitlines()[-1]), err[-2000:]
