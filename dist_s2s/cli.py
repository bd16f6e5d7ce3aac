"""The `dist-s2s` command line (also `python -m dist_s2s`, which launchers need).

    dist-s2s <command> --config configs/NAME.yaml [--section.key=value ...]

Every config key can be overridden; `dist-s2s <command> --help` lists them all.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Callable

from dist_s2s.collector import collect_less_often, leave_without_collecting
from dist_s2s.config import Config, describe_options, load_config
from dist_s2s.errors import Terminated, UserError


def keep_local_ray_on_loopback(config: Config) -> None:
    """An in-process Ray (no ray.address, no RAY_ADDRESS) binds 127.0.0.1 only.

    Ray 2.60 resolves 127.0.0.1 to the machine's external IP and listens on all interfaces unless
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (its single-node switch) is set before `ray` is imported.
    A user who sets it, or names a cluster, keeps Ray's behaviour.
    """
    import os

    if config.ray.cluster() is None:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def _prepare(config: Config, args: argparse.Namespace) -> None:
    keep_local_ray_on_loopback(config)
    from dist_s2s.data.prepare import prepare
    from dist_s2s.data.report import summary

    print(summary(prepare(config), config.data.out_dir))


def _train(config: Config, args: argparse.Namespace) -> None:
    """One process trains the whole model (preparing missing data first); under a launcher each process
    is one pipeline stage of one replica. Then, with eval.after_training, rank 0 scores the result."""
    keep_local_ray_on_loopback(config)  # train prepares missing data in-process
    from dist_s2s.parallel.process_group import (
        join_process_group,
        launched_as_ranks,
        leave_process_group,
        restart_attempt,
    )
    from dist_s2s.train.trainer import train

    attempt = restart_attempt()  # torchrun restarted its workers: continue from the latest checkpoint
    score_bleu = None
    if config.train.best_metric == "bleu" and (config.train.keep_best or config.train.early_stop_patience):
        from dist_s2s.evaluate.evaluate import validation_bleu

        score_bleu = _LazyScorer(lambda: validation_bleu(config))
    if launched_as_ranks():
        join_process_group(config)  # the first import of DeepSpeed (deepspeed_hooks.import_deepspeed)
        from dist_s2s.parallel.schedules import pipeline_steps

        try:
            summary = train(config, pipeline_steps, prepare_missing=False, attempt=attempt, score_bleu=score_bleu)
        finally:  # left already where training ran (its steps close); else now, after an error in its set-up
            leave_process_group(finished=False)
    else:
        from dist_s2s.train.step import require_one_process

        require_one_process(config)  # before preparing any data
        summary = train(config, attempt=attempt, score_bleu=score_bleu)
    if summary is None:  # a pipeline rank other than 0: rank 0 reports
        return
    print(f"trained to step {summary['step']}: valid ppl {summary.get('valid/ppl', float('nan')):.2f}; "
          f"checkpoint {summary['checkpoint']}; MLflow run {summary['mlflow_run_id']} at {summary['tracking_uri']}")
    if "best_checkpoint" in summary:
        print(f"best checkpoint by valid {config.train.best_metric}: {summary['best_checkpoint']} (--checkpoint best)")
    if config.eval.after_training:
        from dist_s2s.evaluate.evaluate import evaluate

        print_scores(evaluate(config, [summary.get("best_checkpoint", summary["checkpoint"])]))


class _LazyScorer:
    """Reads the validation split on first use, once the data is prepared (train may prepare it first)."""

    def __init__(self, build: Callable[[], Callable]):
        self.build, self.score = build, None

    def __call__(self, checkpoint):
        self.score = self.score or self.build()
        return self.score(checkpoint)


def resolve_checkpoints(config: Config, names: list[str]) -> list[str]:
    """`best` and `last` name train.run_dir's best (train.keep_best) and latest checkpoints; anything else is a
    file."""
    from pathlib import Path

    from dist_s2s.train.checkpoint import CheckpointDir

    checkpoints = CheckpointDir(Path(config.train.run_dir) / "checkpoints", keep=config.train.keep_checkpoints)
    resolved = []
    for name in names:
        if name in ("best", "last"):
            path = checkpoints.best() if name == "best" else checkpoints.latest()
            if path is None:
                what = "best checkpoint (train with --train.keep_best=true)" if name == "best" else "checkpoint"
                raise UserError(f"--checkpoint {name}: {checkpoints.directory} has no {what}")
            name = str(path)
        resolved.append(name)
    return resolved


def _download(config: Config, args: argparse.Namespace) -> None:
    from dist_s2s.data.download import download

    download(config.data.root, args.corpus, mirror=args.mirror, archive_mirror=args.archive_mirror)


def _translate(config: Config, args: argparse.Namespace) -> None:
    from dist_s2s.decode.translator import translate_command

    done = translate_command(config, args.checkpoint, beam=args.beam or config.eval.beam_size, nbest=args.nbest,
                             input_path=args.input, output_path=args.output, stdin=sys.stdin, stdout=sys.stdout)
    if config.eval.attention_plots:
        from dist_s2s.evaluate.attention import track_attention_plots

        track_attention_plots(config, done["translator"], done["sources"], done["translations"])


def _rescore(config: Config, args: argparse.Namespace) -> None:
    from pathlib import Path

    from dist_s2s.decode.rescore import rescore_command
    from dist_s2s.decode.translator import Translator, read_lines, write_lines
    from dist_s2s.device import pick_device

    sources = read_lines(args.input, sys.stdin)
    translator = Translator(config, [Path(c) for c in args.checkpoint], pick_device(config.train.device))
    write_lines(rescore_command(translator, sources, Path(args.nbest), args.weight), args.output, sys.stdout)


def _evaluate(config: Config, args: argparse.Namespace) -> None:
    from dist_s2s.evaluate.evaluate import evaluate

    print_scores(evaluate(config, args.checkpoint, split=args.split, beam=args.beam, output=args.output))


def print_scores(scores: dict) -> None:
    print(f"{scores['split']} beam {scores['beam']}: BLEU {scores['bleu']:.2f} ({scores['signature']['bleu']})")
    print(f"{scores['split']} beam {scores['beam']}: chrF {scores['chrf']:.2f} ({scores['signature']['chrf']})")
    print(f"{scores['split']} beam {scores['beam']}: tokenized BLEU {scores['tokenized_bleu']:.2f} "
          f"(Moses tokens, the paper's convention; not comparable with sacreBLEU)")


def _bench(config: Config, args: argparse.Namespace) -> None:
    from dist_s2s.bench.run import bench, table

    result = bench(config, args.config, overrides=args.overrides, modes=args.mode, batches=args.batches,
                   steps=args.steps, warmup=args.warmup, output=args.output)
    print(f"{result['device']} ({result['cores']} cores), matmul {result['matmul_tflops_per_sec']:.3f} TFLOP/s, "
          f"batch {result['batch_size']}, {args.steps} timed steps a mode")
    print(table(result))


def _convert(config: Config, args: argparse.Namespace) -> None:
    from pathlib import Path

    from dist_s2s.parallel.stage_checkpoint import convert

    output = convert(Path(args.checkpoint), Path(args.output), args.stages)
    layout = f"{args.stages} pipeline stage parts beside it" if args.stages else "the single-device format"
    print(f"wrote {output} ({layout})")


def _average(config: Config, args: argparse.Namespace) -> None:
    from pathlib import Path

    from dist_s2s.train.averaging import average, last_checkpoints

    if bool(args.checkpoint) == bool(args.last):
        raise UserError("average takes either --checkpoint A B ... or --last N (of train.run_dir), not both or neither")
    paths = [Path(p) for p in args.checkpoint] if args.checkpoint else last_checkpoints(config.train.run_dir, args.last)
    result = average(paths, Path(args.output))
    steps = ", ".join(str(source["step"]) for source in result["checkpoints"])
    print(f"wrote {result['output']}: the mean of {len(paths)} checkpoints (steps {steps}), one single-device file")


def _serve(config: Config, args: argparse.Namespace) -> None:
    """Serve until interrupted; bound to serve.host (127.0.0.1 unless --host names another)."""
    from pathlib import Path

    import uvicorn

    from dist_s2s.serve.app import KERNEL_CACHE_ENV, create_app

    os.environ.setdefault(KERNEL_CACHE_ENV, str(config.serve.kernel_cache))  # read by oneDNN at its first kernel
    host = args.host or config.serve.host
    port = args.port or config.serve.port
    app = create_app(config, [Path(c) for c in args.checkpoint])
    models = len(args.checkpoint)
    print(f"serving {'an ensemble of ' + str(models) + ' models' if models > 1 else args.checkpoint[0]} on "
          f"http://{host}:{port}/ (the page), POST /translate, GET /health; Ctrl-C stops", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")


def _sync(config: Config, args: argparse.Namespace) -> None:
    from pathlib import Path

    from dist_s2s.train.tracking import UNSENT_FILE, Tracker

    run_dir = Path(config.train.run_dir)
    if not (run_dir / UNSENT_FILE).is_file():
        print(f"nothing to send: {run_dir / UNSENT_FILE} does not exist")
        return
    tracker = Tracker(config, run_dir, continuing=False)
    sent = tracker.sync()
    if tracker.created:  # the server never saw this run: it is over by now
        tracker.client.set_terminated(tracker.run_id, "FINISHED")
    tracker.local.close()
    print(f"sent {sent} metric records to MLflow run {tracker.run_id} at {tracker.uri}")


COMMANDS: dict[str, tuple[str, Callable[[Config, argparse.Namespace], None]]] = {
    "prepare": ("tokenize raw parallel text into vocabularies and Arrow shards (Ray)", _prepare),
    "train": ("train the paper's model: on one device (preparing the data when needed), or as a pipeline "
              "under torchrun / deepspeed", _train),
    "download": ("fetch the public corpora into data.root, checksummed", _download),
    "translate": ("translate text with beam search (several checkpoints: an ensemble)", _translate),
    "evaluate": ("translate a prepared split and score it: sacreBLEU BLEU/chrF, tokenized BLEU, analyses", _evaluate),
    "rescore": ("rerank an n-best list by interpolating its scores with the model's log-probability", _rescore),
    "bench": ("time training steps of every mode on real batches: words/s, MFU, memory, ratios", _bench),
    "convert": ("rewrite a checkpoint as one single-device file or as per-stage pipeline parts", _convert),
    "average": ("average the weights of several checkpoints (the last N of a run) into one file", _average),
    "serve": ("serve a model (or an ensemble) over HTTP: POST /translate, GET /health, a page at /", _serve),
    "sync": ("send the metrics a run kept locally while its MLflow server did not answer", _sync),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dist-s2s",
        description="Sequence to Sequence Learning with Neural Networks (Sutskever et al., 2014), pipeline-parallel.",
    )
    # The deepspeed launcher passes --local_rank before the command; LOCAL_RANK carries the same.
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True, metavar="<command>")
    for name, (summary, _) in COMMANDS.items():
        command = commands.add_parser(
            name, help=summary, description=summary, formatter_class=argparse.RawDescriptionHelpFormatter,
            epilog="config overrides (--section.key=value):\n" + describe_options(),
        )
        command.add_argument("--config", metavar="FILE", help="YAML config (configs/*.yaml); defaults are the paper's")
        if name == "download":
            command.add_argument("--corpus", nargs="+", default=["multi30k"], metavar="NAME",
                                 help="corpora to fetch (multi30k, wmt14_dev, wmt14_test, wmt14_train, wmt14_selected)")
            command.add_argument("--archive-mirror", metavar="URL",
                                 help="fetch the upstream archives from URL/<host>/<path> (a copy of their layout)")
            command.add_argument("--mirror", metavar="URL",
                                 help="fetch data.root's layout from this base URL instead of the upstream sites")
        if name in ("translate", "evaluate", "rescore", "serve"):
            command.add_argument("--checkpoint", required=True, nargs="+", metavar="FILE",
                                 help="checkpoint(s); several decode as an ensemble; `best` / `last`: "
                                      "train.run_dir's best (train.keep_best) / latest")
        if name in ("translate", "evaluate", "rescore"):
            command.add_argument("--output", metavar="FILE",
                                 help="write here instead of stdout" if name != "evaluate"
                                 else "also write the scores as JSON (bleu, chrf, signature)")
        if name == "serve":
            command.add_argument("--host", metavar="ADDRESS", help="listen here (default serve.host, 127.0.0.1)")
            command.add_argument("--port", type=int, metavar="N", help="TCP port (default serve.port)")
        if name in ("translate", "evaluate"):
            command.add_argument("--beam", type=int, metavar="N", help="beam width (default eval.beam_size)")
        if name in ("translate", "rescore"):
            command.add_argument("--input", metavar="FILE", help="source sentences, one a line (default stdin)")
        if name == "translate":
            command.add_argument("--nbest", type=int, default=1, metavar="K",
                                 help="write the K best of each line in Moses n-best format")
        if name == "evaluate":
            command.add_argument("--split", metavar="NAME", help="prepared split (default eval.split)")
        if name == "rescore":
            command.add_argument("--nbest", required=True, metavar="FILE", help="Moses n-best list to rerank")
            command.add_argument("--weight", type=float, default=0.5,
                                 help="weight of the list's own score (0: the model alone; 0.5: the paper's average)")
        if name == "bench":
            command.add_argument("--mode", nargs="+", default=["plain", "single", "pipeline:1", "pipeline:2"],
                                 help="plain, single, pipeline:S; @T gives each process T threads")
            command.add_argument("--batches", metavar="DIR", help="prepared data whose train batches are timed "
                                 "(default data.out_dir; the paper config takes runs/data/multi30k's lengths)")
            command.add_argument("--steps", type=int, default=10, help="timed steps a mode")
            command.add_argument("--warmup", type=int, default=2, help="untimed steps first")
            command.add_argument("--output", metavar="FILE", help="write the results as JSON")
        if name == "convert":
            command.add_argument("--checkpoint", required=True, metavar="FILE", help="checkpoint to read "
                                                                                     "(either format)")
            command.add_argument("--output", required=True, metavar="FILE", help="checkpoint file to write")
            command.add_argument("--stages", type=int, metavar="N",
                                 help="write N pipeline stage parts (default: one single-device file)")
        if name == "average":
            command.add_argument("--checkpoint", nargs="+", metavar="FILE", help="checkpoints to average")
            command.add_argument("--last", type=int, metavar="N", help="the N newest checkpoints of train.run_dir")
            command.add_argument("--output", required=True, metavar="FILE", help="checkpoint file to write")
    return parser


def split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """Separate `--section.key=value` (or `--section.key value`) from ordinary options."""
    options, overrides = [], []
    index = 0
    while index < len(argv):
        item = argv[index]
        name = item[2:].split("=", 1)[0] if item.startswith("--") else ""
        if "." in name:
            if "=" not in item:
                if index + 1 >= len(argv):
                    raise UserError(f"override {item} needs a value: {item}=VALUE")
                item = f"{item}={argv[index + 1]}"
                index += 1
            overrides.append(item)
        else:
            options.append(item)
        index += 1
    return options, overrides


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever sys.stderr is now: a progress bar that redirects it keeps log lines above the bar."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def check_outputs(command: str, config: Config, args: argparse.Namespace) -> None:
    """Every place `command` will write, writable before it starts (a one-line error naming it otherwise)."""
    from dist_s2s.outputs import writable_dir, writable_file

    directories = {"prepare": [(config.data.out_dir, "data.out_dir")],
                   "train": [(config.train.run_dir, "train.run_dir")],
                   "evaluate": [(config.train.run_dir, "train.run_dir (the evaluation's report and MLflow run)")],
                   "download": [(config.data.root, "data.root")]}.get(command, [])
    if command == "translate" and config.eval.attention_plots:
        directories.append((config.train.run_dir, "train.run_dir (the attention pictures)"))
    for path, what in directories:
        writable_dir(path, what)
    if command in ("translate", "evaluate", "rescore", "bench", "convert"):
        writable_file(getattr(args, "output", None), "--output")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[_CurrentStderr()])
    try:
        options, overrides = split_overrides(argv)
        args = build_parser().parse_args(options)
        config = load_config(args.config, overrides)
        args.overrides = overrides
        check_outputs(args.command, config, args)  # before any work
        if isinstance(getattr(args, "checkpoint", None), list):
            args.checkpoint = resolve_checkpoints(config, args.checkpoint)
        COMMANDS[args.command][1](config, args)
    except UserError as error:
        print(f"dist-s2s: error: {error}", file=sys.stderr)
        return 2
    except Terminated as stopped:  # outside the training loop, which says where it stopped
        print(f"dist-s2s: error: {stopped}", file=sys.stderr)
        return 2
    return 0


def run() -> None:
    """Console-script entry point, and `python -m dist_s2s`'s (the collector set as `collector.py` says). A rank
    of a launched job ends through `process_group.end_rank_process`, whatever ended it (a traceback is printed)."""
    collect_less_often()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:  # not a launched rank (`launched_as_ranks`, without torch)
        code = main()
        leave_without_collecting()
        sys.exit(code)
    from dist_s2s.parallel.process_group import end_rank_process

    try:
        code = main()
    except SystemExit as exit_:  # argparse's --help and usage errors, which said what they had to
        code = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
    except BaseException:  # a bug: its traceback, then the same way out as every rank
        traceback.print_exc()
        code = 1
    end_rank_process(code)
