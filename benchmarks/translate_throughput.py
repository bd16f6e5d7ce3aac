"""Sentences/s and target words/s of beam search: dist-s2s's, a plain-PyTorch one, and the search before it was
made faster, measured in one run on the same model and sentences.

    .venv/bin/python benchmarks/translate_throughput.py --config configs/multi30k.yaml \
        --checkpoint runs/averaging-main/checkpoints/step-00002724.pt \
        --output benchmarks/results/translate-cpu-main.json

The sentences are a prepared split's (all of test2016 by default), decoded as `translate` decodes them: sorted by
length, `batch` sentences at a time, start-up excluded. dist-s2s runs through `Translator.translate_ids` (what
`translate`, `evaluate` and `serve` call) at every beam and batch size asked; the plain search
(`plain_beam.py`, written the obvious way) and the search as it was before (tests/beam_before.py, kept as the
test oracle) run at one batch size, at every beam. Each row says whether its best translations equal
dist-s2s's: the search before must give exactly the same; the plain one ranks and stops differently.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from decoding_setup import model_and_sources, search_before
from plain_beam import plain_beam_search

from dist_s2s.decode.beam import Ensemble
from dist_s2s.decode.translator import Translator, length_sorted_batches

Search = Callable[..., list[list[int]]]
"""(translator, src, lengths, *, beam, alpha) → each sentence's best translation as ids."""


def before_search() -> Search | None:
    """The search before issue 36, from tests/ (None where the tests are not beside this checkout)."""
    before = search_before()
    if before is None:
        return None

    def search(translator, src, lengths, *, beam, alpha):
        found = before.beam_search_before(before.EnsembleBefore(translator.ensemble.models), src, lengths, beam,
                                          max_length_ratio=translator.config.eval.max_length_ratio,
                                          length_penalty=alpha)
        return [hypotheses[0].tokens if hypotheses else [] for hypotheses in found]
    return search


def plain(translator, src, lengths, *, beam, alpha):
    return plain_beam_search(translator.ensemble.models[0], src, lengths, beam,
                             max_length_ratio=translator.config.eval.max_length_ratio, length_penalty=alpha)


def decoded(translator: Translator, sources: list[list[int]], *, beam: int, batch: int, alpha: float,
            search: Search | None) -> list[list[int]]:
    """Each source's best translation as ids, in input order: through `translate_ids`, or batched as it batches
    (longest first) and handed to `search`."""
    if search is None:
        return [found[0].ids for found in translator.translate_ids(sources, beam, batch_size=batch,
                                                                   length_penalty=alpha)]
    results: list[list[int]] = [[] for _ in sources]
    for chunk, src, lengths in length_sorted_batches(sources, batch):
        for index, ids in zip(chunk, search(translator, src, lengths, beam=beam, alpha=alpha)):
            results[index] = ids
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--split", default="test2016")
    parser.add_argument("--sentences", type=int, default=0, help="the first N of the split (0: all)")
    parser.add_argument("--beams", type=int, nargs="+", default=[1, 2, 5, 12])
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 64, 128])
    parser.add_argument("--baseline-batch", type=int, default=64,
                        help="the batch size the other searches run at (and dist-s2s's reference for same best)")
    parser.add_argument("--baseline-batches", type=int, nargs="+",
                        help="run the other searches at these batch sizes instead (default: --baseline-batch)")
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.0, 0.6],
                        help="length penalties; the second and later only at the largest beam")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"],
                        help="eval.precision values dist-s2s runs at (the first is the reference for same best)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path)
    args, overrides = parser.parse_known_args()
    translator, sources = model_and_sources(args, overrides)
    searches = {"dist-s2s": None, "plain PyTorch": plain, "before (tests/beam_before.py)": before_search()}
    searches.update({f"dist-s2s, {precision}": None for precision in args.precisions[1:]})
    runs, reference = [], {}
    for alpha in args.alphas:
        for beam in args.beams if alpha == args.alphas[0] else args.beams[-1:]:
            for name, search in searches.items():
                ours = name.startswith("dist-s2s")
                if not ours and search is None:
                    continue
                precision = name.split(", ")[1] if ", " in name else args.precisions[0]
                if translator.ensemble.precision != precision:
                    translator.ensemble = Ensemble(translator.ensemble.models, precision)
                for batch in args.batches if ours else (args.baseline_batches or [args.baseline_batch]):
                    started = time.perf_counter()
                    found = decoded(translator, sources, beam=beam, batch=batch, alpha=alpha, search=search)
                    seconds = time.perf_counter() - started
                    words = sum(len(ids) for ids in found)
                    key = (alpha, beam)
                    if name == "dist-s2s" and batch == args.baseline_batch:
                        reference[key] = found
                    same = None if key not in reference else sum(a == b for a, b in zip(found, reference[key]))
                    runs.append({"search": name, "precision": precision if ours else "fp32", "beam": beam,
                                 "batch": batch, "length_penalty": alpha,
                                 "sentences": len(sources), "seconds": round(seconds, 2),
                                 "sentences_per_sec": round(len(sources) / seconds, 1),
                                 "target_words_per_sec": round(words / seconds, 1), "target_words": words,
                                 "same_best_as_dist_s2s": same})
                    print(f"{name:<30} beam {beam:>2} batch {batch:>3} α {alpha:.1f}: "
                          f"{runs[-1]['sentences_per_sec']:>6.1f} sentences/s {runs[-1]['target_words_per_sec']:>7.0f} "
                          f"words/s ({words} words; same best as dist-s2s: {same})", flush=True)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps({
            "config": args.config, "overrides": overrides, "checkpoint": args.checkpoint, "split": args.split,
            "threads": args.threads, "device": "cpu",
            "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                     text=True).stdout.strip(),
            "date": datetime.now(UTC).isoformat(timespec="seconds"), "runs": runs}, indent=2) + "\n")


if __name__ == "__main__":
    main()
