"""Record a trained config's BLEU as a committed result: the evaluations, the candidates tried on valid, and
the end-to-end time, with the commit and resolved config (what README and docs tables are made from).

    .venv/bin/python benchmarks/record_bleu.py --config configs/multi30k-attention.yaml \
        --evaluation runs/x-valid.json runs/x-test2016.json runs/x-test2017.json \
        --candidate "--optim.optimizer=sgd --optim.lr=0.7=runs/cand/attn-words-valid.json" \
        --end-to-end-s 1234 --end-to-end-command "time dist-s2s train --config ..." \
        --output benchmarks/results/bleu-multi30k-attention.json

Each `--evaluation` / candidate file is what `dist-s2s evaluate --output` wrote. Test splits are recorded as
chosen on valid: run them once, after the choices.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from dist_s2s.bench.measure import device_name
from dist_s2s.config import load_config
from dist_s2s.provenance import provenance

KEPT = ("split", "beam", "bleu", "chrf", "perplexity", "length_ratio", "signature", "tokenized_bleu",
        "sentences_per_sec", "bleu_by_length", "checkpoints")


def evaluation(path: Path, length_penalty: float) -> dict:
    scores = json.loads(path.read_text())
    return {**{key: scores[key] for key in KEPT}, "length_penalty": length_penalty, "chosen_on": "valid"}


def candidate(spec: str) -> dict:
    """"OVERRIDES=FILE": a run tried on valid and not chosen."""
    overrides, _, path = spec.rpartition("=")
    scores = json.loads(Path(path).read_text())
    return {"overrides": overrides.split(), **{key: scores[key] for key in KEPT if key != "bleu_by_length"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--evaluation", type=Path, nargs="+", required=True)
    parser.add_argument("--candidate", action="append", default=[], metavar="OVERRIDES=FILE")
    parser.add_argument("--end-to-end-s", type=float, required=True)
    parser.add_argument("--end-to-end-command", required=True)
    parser.add_argument("--end-to-end-note", default="prepare + train + evaluate test2016 from no prepared data, "
                        "nothing beside it")
    parser.add_argument("--note", default="")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    config = load_config(Path(args.config), [])
    record = {**provenance(config, config_path=args.config),
              "device": f"cpu, {torch.get_num_threads()} threads ({device_name(torch.device('cpu'))})",
              "results": [evaluation(path, config.eval.length_penalty) for path in args.evaluation],
              "candidates_not_chosen": [candidate(spec) for spec in args.candidate],
              "end_to_end": {"command": args.end_to_end_command, "wall_s": args.end_to_end_s,
                             "note": args.end_to_end_note},
              "note": args.note}
    args.output.write_text(json.dumps(record, indent=2, default=str) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
