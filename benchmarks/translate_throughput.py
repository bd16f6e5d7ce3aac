"""Sentences/s and words/s of beam search, batched vs one sentence at a time, at several beam widths.

    .venv/bin/python benchmarks/translate_throughput.py --config configs/multi30k-paper.yaml \
        --checkpoint runs/multi30k/checkpoints/step-00001703.pt --split test2016 --sentences 200

Sentences are the first `--sentences` of a prepared split, in corpus order; words/s counts the
source words read and the target words written. Batched decoding is what `translate` and
`evaluate` do (`eval.batch_size` sentences at once, sorted by length); one at a time is the
same search called per sentence. Both produce identical translations (checked here).
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from dist_s2s.config import load_config
from dist_s2s.decode.translator import Translator
from dist_s2s.evaluate.evaluate import split_rows


def timed(translator: Translator, sources: list[list[int]], beam: int, batch_size: int) -> tuple[float, list]:
    started = time.perf_counter()
    found = translator.translate_ids(sources, beam, batch_size=batch_size)
    return time.perf_counter() - started, [f[0].tokens for f in found]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--split", default="test2016")
    parser.add_argument("--sentences", type=int, default=200)
    parser.add_argument("--beams", type=int, nargs="+", default=[1, 2, 12])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path)
    args, overrides = parser.parse_known_args()
    torch.set_num_threads(args.threads)
    config = load_config(args.config, overrides)
    translator = Translator(config, [Path(args.checkpoint)])
    sources = [list(ids) for ids in split_rows(Path(config.data.out_dir), args.split).column("src_ids").to_pylist()]
    sources = sources[:args.sentences]
    source_words = sum(len(s) for s in sources)
    translator.translate_ids(sources[:8], 2)  # warm-up
    runs = []
    for beam in args.beams:
        batched_s, batched = timed(translator, sources, beam, config.eval.batch_size)
        single_s, single = timed(translator, sources, beam, 1)
        words = source_words + sum(len(t) for t in batched)
        runs.append({
            "beam": beam, "sentences": len(sources),
            "batched_sentences_per_sec": round(len(sources) / batched_s, 1),
            "batched_words_per_sec": round(words / batched_s, 1),
            "one_at_a_time_sentences_per_sec": round(len(sources) / single_s, 1),
            "one_at_a_time_words_per_sec": round(words / single_s, 1),
            "speedup": round(single_s / batched_s, 2),
            "same_translations": batched == single,
        })
        print(f"beam {beam:>2}: batched {runs[-1]['batched_sentences_per_sec']:>7.1f} sent/s "
              f"{runs[-1]['batched_words_per_sec']:>8.0f} words/s | one at a time "
              f"{runs[-1]['one_at_a_time_sentences_per_sec']:>6.1f} sent/s | {runs[-1]['speedup']:.1f}× | "
              f"same output: {runs[-1]['same_translations']}")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps({
            "config": args.config, "checkpoint": args.checkpoint, "split": args.split, "threads": args.threads,
            "batch_size": config.eval.batch_size, "device": "cpu",
            "date": datetime.now(UTC).isoformat(timespec="seconds"), "runs": runs}, indent=2) + "\n")


if __name__ == "__main__":
    main()
