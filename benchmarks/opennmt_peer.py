"""The peer users compare beam search with: OpenNMT-py's `onmt_translate` on a model of the main job's sizes.

    .venv/bin/python benchmarks/opennmt_peer.py --onmt-bin /path/to/onmt-venv/bin --work runs/opennmt \
        --output benchmarks/results/opennmt-peer.json

OpenNMT-py 3.5.1 pins torch < 2.3 but translates on torch 2.13 on CPU; it lives in its own virtual environment
outside this project (docs/evaluation.md, "Decoding speed", says how to make one). This script Moses-tokenizes
Multi30k as `prepare` does (sacremoses, same normalization), trains a model of the main job's sizes (2 × 384 LSTM,
256-d embeddings, 8k / 8k words, no attention, batches of 128 sentences, Adam) for `--steps` steps once (kept in
`--work`), then times `onmt_translate` on test2016 at beam 12, `--batch` sentences a batch, without and with
GNMT's length penalty (α 0.6), each `--repeats` times. The figure is its own "Time w/o python interpreter
load/terminate" (decoding without start-up), as `translate_throughput.py` times dist-s2s without start-up.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

from dist_s2s.data.tokenize import tokenize

SIZES = {"layers": 2, "hidden_size": 384, "word_vec_size": 256, "src_vocab_size": 8000, "tgt_vocab_size": 8000}
DECODE_TIME = re.compile(r"Time w/o python interpreter load/terminate:\s*([0-9.]+)")


def tokenized(source: Path, target: Path, lang: str) -> None:
    """One Moses-tokenized line per line, as `prepare` tokenizes (the model never sees raw text)."""
    if target.exists():
        return
    lines = source.read_text(encoding="utf-8").splitlines()
    target.write_text("".join(" ".join(tokenize(" ".join(line.split()), lang)) + "\n" for line in lines),
                      encoding="utf-8")


def config_text(work: Path, steps: int, threads: int) -> str:
    data = {"corpus_1": {"path_src": str(work / "train.en"), "path_tgt": str(work / "train.fr")},
            "valid": {"path_src": str(work / "valid.en"), "path_tgt": str(work / "valid.fr")}}
    settings = {
        "save_data": str(work / "data"), "src_vocab": str(work / "vocab.en"), "tgt_vocab": str(work / "vocab.fr"),
        "overwrite": True, "data": data, "save_model": str(work / "model"), "save_checkpoint_steps": steps,
        "train_steps": steps, "valid_steps": steps, "encoder_type": "rnn", "decoder_type": "rnn", "rnn_type": "LSTM",
        "global_attention": "none", "batch_size": 128, "batch_type": "sents", "optim": "adam",
        "learning_rate": 0.002, "dropout": [0.2], "param_init": 0.08, "max_grad_norm": 5, "report_every": 50,
        "world_size": 1, "gpu_ranks": [], "num_workers": 0, "seed": 1, **SIZES}
    return json.dumps(settings, indent=2)  # JSON is YAML


def run(command: list[str], *, threads: int, log: Path) -> str:
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads), "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
    finished = subprocess.run(command, env=environment, capture_output=True, text=True)
    log.write_text(finished.stdout + finished.stderr)
    if finished.returncode:
        raise SystemExit(f"{command[0]} failed (exit {finished.returncode}); see {log}")
    return finished.stdout + finished.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onmt-bin", type=Path, required=True, help="bin/ of a virtual environment with OpenNMT-py")
    parser.add_argument("--data", type=Path, default=Path("../shared/data/multi30k"))
    parser.add_argument("--work", type=Path, default=Path("runs/opennmt"))
    parser.add_argument("--steps", type=int, default=2700, help="training steps (2,724 = the main job's 12 epochs)")
    parser.add_argument("--split", default="test2016")
    parser.add_argument("--beam", type=int, default=12)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    for split in ("train", "valid", args.split):
        for lang in ("en", "fr"):
            tokenized(args.data / f"{split}.{lang}", work / f"{split}.{lang}", lang)
    (work / "config.yaml").write_text(config_text(work, args.steps, args.threads))
    model = work / f"model_step_{args.steps}.pt"
    if not model.exists():
        run([str(args.onmt_bin / "onmt_build_vocab"), "-config", str(work / "config.yaml"), "-n_sample", "-1"],
            threads=args.threads, log=work / "build_vocab.log")
        started = time.perf_counter()
        run([str(args.onmt_bin / "onmt_train"), "-config", str(work / "config.yaml")], threads=args.threads,
            log=work / "train.log")
        print(f"trained {args.steps} steps in {time.perf_counter() - started:.0f} s")
    sentences = len((work / f"{args.split}.en").read_text(encoding="utf-8").splitlines())
    runs = []
    for name, penalty in (("no length penalty", []), ("length penalty wu α 0.6", ["-length_penalty", "wu",
                                                                                   "-alpha", "0.6"])):
        for repeat in range(args.repeats):
            output = work / f"{args.split}.hyp"
            printed = run([str(args.onmt_bin / "onmt_translate"), "-model", str(model), "-src",
                           str(work / f"{args.split}.en"), "-output", str(output), "-beam_size", str(args.beam),
                           "-batch_size", str(args.batch), "-batch_type", "sents", "-gpu", "-1", *penalty],
                          threads=args.threads, log=work / "translate.log")
            found = DECODE_TIME.search(printed)
            if not found:
                raise SystemExit(f"onmt_translate printed no decoding time; see {work / 'translate.log'}")
            seconds = float(found.group(1))
            words = sum(len(line.split()) for line in output.read_text(encoding="utf-8").splitlines())
            runs.append({"decoding": name, "repeat": repeat, "seconds": seconds,
                         "sentences_per_sec": round(sentences / seconds, 1), "target_words": words})
            print(f"onmt_translate {name}: {sentences / seconds:.1f} sentences/s ({seconds:.2f} s, {words} words)")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps({
            "tool": "OpenNMT-py 3.5.1 onmt_translate", "model": {**SIZES, "attention": "none",
                                                                 "training_steps": args.steps},
            "split": args.split, "beam": args.beam, "batch_size": args.batch, "threads": args.threads,
            "device": "cpu", "date": datetime.now(UTC).isoformat(timespec="seconds"), "runs": runs}, indent=2) + "\n")


if __name__ == "__main__":
    main()
