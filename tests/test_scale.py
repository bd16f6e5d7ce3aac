"""`prepare` and training on a corpus shaped like WMT'14, small: what benchmarks/prepare_scale.py measures
at 1M, 4M and 12M pairs (docs/data.md), kept honest in every run.

The corpus comes from benchmarks/synthetic_corpus.py (real pairs joined to WMT'14's lengths, fresh word types
at its rate). Memory is measured as the driver's peak of traced Python allocations (tracemalloc): a count of
bytes, not of time, so it is the same on a slow machine and a fast one. Ray's tasks hold at most
`data.chunk_lines` lines or `data.shard_rows` rows each by construction; the driver is where anything kept per
pair would pile up.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
from conftest import REPO, SHARED_DATA, tiny_config

from dist_s2s.config import load_config
from dist_s2s.data.prepare import prepare
from dist_s2s.train.trainer import train

BYTES_PER_PAIR = 32
"""What the driver may add per pair: less than one Python int kept a pair (36 bytes in a list)."""


def synthetic_corpus(root: Path, pairs: int) -> Path:
    """`root/wmt14_like/train.*` from the generator, with the real newstest2012 + 2013 beside it."""
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "synthetic_corpus.py"), "--pairs", str(pairs),
                    "--out", str(root / "wmt14_like"), "--root", str(SHARED_DATA)], check=True, capture_output=True)
    (root / "wmt14_dev").symlink_to(SHARED_DATA / "wmt14_dev", target_is_directory=True)
    return root


def paper_data_settings(root: Path, out_dir: Path, *overrides: str):
    """configs/paper-synthetic.yaml (160k / 80k words, max_len 80) with tasks small enough to be saturated."""
    return load_config(REPO / "configs" / "paper-synthetic.yaml", [
        f"--data.root={root}", f"--data.out_dir={out_dir}", "--data.chunk_lines=2500", "--data.shard_rows=5000",
        *overrides])


def traced_prepare(config, caplog) -> tuple[int, int]:
    """The driver's peak traced bytes during `prepare`, and the word types it counted (both sides)."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        with caplog.at_level(logging.INFO, logger="dist_s2s.data.prepare"):
            prepare(config)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    found = re.findall(r"prepare: vocab \w+ \d+ of (\d+) distinct words, \w+ \d+ of (\d+)", caplog.text)
    caplog.clear()
    return peak, sum(int(count) for count in found[-1])


@pytest.fixture(scope="module")
def corpus_50k(tmp_path_factory) -> Path:
    return synthetic_corpus(tmp_path_factory.mktemp("synthetic"), 50_000)


def test_the_synthetic_corpus_has_wmt14s_lengths_and_a_growing_vocabulary(corpus_50k):
    stats = json.loads((corpus_50k / "wmt14_like" / "stats.json").read_text())
    assert stats["pairs"] == 50_000
    assert 24 <= stats["mean_words_per_line"]["en"] <= 27, "WMT'14: 304M English words over 12M pairs"
    assert 0.01 <= stats["lines_over_80_words"] / stats["pairs"] <= 0.04, "a tail beyond the paper's max_len"
    assert stats["fresh_types"]["fr"] > stats["fresh_types"]["en"] > 5_000


def test_prepare_s_memory_per_pair_does_not_grow_with_the_corpus(ray_local, corpus_50k, tmp_path, caplog):
    """12.5k pairs, then the same 12.5k four times over (50k pairs, the same word types): the driver's peak may
    grow by at most BYTES_PER_PAIR a pair (docs/data.md has what 12M pairs cost every process)."""
    lines = {lang: (corpus_50k / "wmt14_like" / f"train.{lang}").read_bytes().split(b"\n")[:12_500]
             for lang in ("en", "fr")}
    peaks = {}
    for repeats in (0.2, 1, 4):  # the first warms up what any prepare allocates once (Ray's, pyarrow's caches)
        root = tmp_path / f"root-{repeats}"
        (root / "wmt14_like").mkdir(parents=True)
        for lang, text in lines.items():
            kept = text[:2_500] if repeats < 1 else text * repeats
            (root / "wmt14_like" / f"train.{lang}").write_bytes(b"\n".join(kept) + b"\n")
        (root / "wmt14_dev").symlink_to(SHARED_DATA / "wmt14_dev", target_is_directory=True)
        peaks[repeats] = traced_prepare(paper_data_settings(root, tmp_path / f"data-{repeats}"), caplog)
    (small, types_small), (large, types_large) = peaks[1], peaks[4]
    assert types_small == types_large
    assert large - small <= BYTES_PER_PAIR * 37_500, (
        f"the driver's peak grew by {large - small:,} bytes for 37,500 more pairs of the same words "
        f"({(large - small) / 37_500:.0f} bytes a pair; at most {BYTES_PER_PAIR})")


def test_the_papers_data_settings_train_from_the_synthetic_shards(ray_local, corpus_50k, tmp_path):
    """50k WMT-shaped pairs through prepare (the paper's vocabularies and max_len) and 5 steps of a small model."""
    config = paper_data_settings(corpus_50k, tmp_path / "data")
    manifest = prepare(config)
    assert manifest.splits["train"]["rows_in"] == 50_000
    assert manifest.filtered["train"]["too_long"] > 0, "lines beyond 80 words are filtered and counted"
    small_model = tiny_config(tmp_path, f"--data.root={corpus_50k}", f"--data.out_dir={tmp_path / 'data'}",
                              "--train.max_steps=5", "--train.batch_size=32", "--train.valid_every=5")
    small_model.data = config.data
    summary = train(small_model)
    assert summary["step"] == 5 and summary["valid/ppl"] < 1e6
