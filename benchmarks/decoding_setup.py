"""What the decoding benchmarks (`translate_throughput.py`, `profile_decoding.py`) share: the model and a split's
sources loaded as `translate` loads them, and the search as it was before it was made faster."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import ModuleType

import torch

from dist_s2s.config import load_config
from dist_s2s.decode.translator import Translator
from dist_s2s.evaluate.evaluate import split_rows


def model_and_sources(args: argparse.Namespace, overrides: list[str]) -> tuple[Translator, list[list[int]]]:
    """`args.config` (with `overrides`) and `args.checkpoint` as a translator on `args.threads` threads, and the
    source ids of `args.split` (its first `args.sentences`; 0: all); decoding is warmed up once."""
    torch.set_num_threads(args.threads)
    config = load_config(args.config, overrides)
    translator = Translator(config, [Path(args.checkpoint)])
    sources = [list(ids) for ids in split_rows(Path(config.data.out_dir), args.split).column("src_ids").to_pylist()]
    sources = sources[:args.sentences] if args.sentences else sources
    translator.translate_ids(sources[:16], 2)  # warm-up
    return translator, sources


def search_before() -> ModuleType | None:
    """tests/beam_before.py, the search before issue 36 that the tests keep as their oracle (None where the tests
    are not beside this checkout)."""
    tests = str(Path(__file__).resolve().parent.parent / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    try:
        import beam_before
    except ImportError:
        return None
    return beam_before
