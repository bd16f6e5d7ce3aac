"""Where a beam search's time goes: one `translate` of a split under torch.profiler, the operators' time grouped
by what they do, for dist-s2s's search now and as it was before (tests/beam_before.py), at two batch sizes.

    .venv/bin/python benchmarks/profile_decoding.py --config configs/multi30k.yaml \
        --checkpoint runs/averaging-main/checkpoints/step-00002724.pt --output benchmarks/results/beam-profile.json

For each search and batch size: the wall time, the decoder steps and the rows they ran (sentences × beam, a
row-step being one hypothesis advanced one word), and each group's share of the operators' time; what the
operators do not account for is the host's own work (Python, dispatch). A Python sampling profiler
(`py-spy record -- python benchmarks/profile_decoding.py ...`) attributes the same wall time to lines.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

from decoding_setup import model_and_sources, search_before
from torch.profiler import ProfilerActivity, profile

from dist_s2s.decode import beam as beam_module
from dist_s2s.decode.translator import Translator

beam_before = search_before()
if beam_before is None:
    raise SystemExit("profile_decoding needs tests/beam_before.py (the search before) beside this checkout")

GROUPS = {
    "LSTM layers": {"aten::mkldnn_rnn_layer", "aten::_thnn_fused_lstm_cell", "aten::lstm_cell"},
    "softmax product": {"aten::addmm", "aten::mm", "aten::matmul", "aten::bmm"},
    "log-softmax": {"aten::_log_softmax"},
    "top-k": {"aten::topk"},
    "passes over the [rows, vocabulary] scores": {"aten::cat", "aten::copy_", "aten::masked_fill_", "aten::fill_",
                                                  "aten::add", "aten::add_", "aten::bitwise_and", "aten::bitwise_or",
                                                  "aten::sum", "aten::div_", "aten::mean", "aten::stack",
                                                  "aten::clone", "aten::index_fill_"},
    "reordering (states, prefixes, kept hypotheses)": {"aten::index", "aten::index_select", "aten::gather",
                                                       "aten::index_put_", "aten::where"},
    "complete hypotheses' sort": {"aten::sort", "aten::argsort"},
}


def group_of(name: str) -> str:
    return next((group for group, names in GROUPS.items() if name in names), "other operators")


def counted_steps(search: str, steps: list[int]):
    """Count each decoder step's rows by wrapping the search's `Ensemble.step`."""
    owner = beam_module.Ensemble if search == "now" else beam_before.EnsembleBefore
    original = owner.step

    def step(self, tokens, *rest):
        steps.append(len(tokens))
        return original(self, tokens, *rest)
    owner.step = step
    return owner, original


def run(translator: Translator, sources: list[list[int]], *, search: str, beam: int, batch: int, alpha: float
        ) -> dict:
    if search == "before":
        def before(ensemble, src, lengths, width, **options):
            return beam_before.beam_search_before(beam_before.EnsembleBefore(ensemble.models), src, lengths, width,
                                                  **options)
        translator_search = before
    else:
        translator_search = beam_module.beam_search
    import dist_s2s.decode.translator as translator_module
    saved = translator_module.beam_search
    translator_module.beam_search = translator_search
    steps: list[int] = []
    owner, original = counted_steps(search, steps)
    try:
        with profile(activities=[ProfilerActivity.CPU]) as profiler:
            started = time.perf_counter()
            translator.translate_ids(sources, beam, batch_size=batch, length_penalty=alpha)
            wall = time.perf_counter() - started
    finally:
        owner.step = original
        translator_module.beam_search = saved
    groups: dict[str, float] = defaultdict(float)
    for event in profiler.key_averages():
        groups[group_of(event.key)] += event.self_cpu_time_total / 1e6
    operators = sum(groups.values())
    shares = {group: round(seconds, 2) for group, seconds in sorted(groups.items(), key=lambda g: -g[1])}
    shares["host's own work (wall − operators)"] = round(max(0.0, wall - operators), 2)
    record = {"search": search, "beam": beam, "batch": batch, "length_penalty": alpha, "wall_s": round(wall, 2),
              "sentences_per_sec": round(len(sources) / wall, 1), "decoder_steps": len(steps),
              "row_steps": sum(steps), "ms_per_step": round(1000 * wall / len(steps), 1),
              "us_per_row_step": round(1e6 * wall / sum(steps), 1), "seconds_by_group": shares}
    print(json.dumps(record), flush=True)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--split", default="test2016")
    parser.add_argument("--sentences", type=int, default=0, help="the first N of the split (0: all)")
    parser.add_argument("--beam", type=int, default=12)
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--alpha", type=float, default=0.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path)
    args, overrides = parser.parse_known_args()
    translator, sources = model_and_sources(args, overrides)
    records = [run(translator, sources, search=search, beam=args.beam, batch=batch, alpha=args.alpha)
               for search in ("before", "now") for batch in args.batches]
    if args.output:
        args.output.write_text(json.dumps({
            "config": args.config, "checkpoint": args.checkpoint, "split": args.split, "threads": args.threads,
            "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                     text=True).stdout.strip(),
            "date": datetime.now(UTC).isoformat(timespec="seconds"), "runs": records}, indent=2) + "\n")


if __name__ == "__main__":
    main()
