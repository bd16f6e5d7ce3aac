"""The two passes of `prepare`, as plain functions; `prepare` runs each call as a Ray task.

Pass 1, per chunk of input lines: clean, tokenize, filter, route to a split and a length
bucket, count words. Pass 2, per output shard: encode the tokenized rows with the vocabulary
built in between. Every file is written atomically, so a retried task just writes it again.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from dist_s2s.config import DataConfig
from dist_s2s.data.clean import PairCleaner, TokenizedPair
from dist_s2s.data.shards import SCHEMA, TOKENIZED_SCHEMA, bucket_of, read_table, write_atomically, write_table
from dist_s2s.data.sources import InputPair, LineRange, read_lines
from dist_s2s.data.splits import split_of
from dist_s2s.data.subwords import CodecFiles, load_codec
from dist_s2s.data.vocab import BOS_ID, EOS_ID, UNK_ID

RECEIPT = "receipt.json"
COUNTS = "counts.arrow"


@dataclass(frozen=True)
class ShardPlan:
    """Rows [start, stop) of each listed pass-1 piece, in order, make one shard."""

    split: str
    bucket: int
    path: str
    slices: tuple[tuple[str, int, int], ...]
    keep_text: bool


def tokenize_chunk(pair: InputPair, pair_index: int, chunk: LineRange, config: DataConfig, *, work_dir: Path) -> dict:
    """Pass 1 over one chunk; writes one piece per (split, bucket), word counts, and a receipt.

    File names in the receipt are relative to `work_dir`, so a moved output directory still reuses it.
    """
    receipt_path = work_dir / RECEIPT
    if receipt_path.is_file():  # finished by an earlier (interrupted) run with the same inputs and config
        return json.loads(receipt_path.read_text())
    src_lines = read_lines(pair.src_path, chunk.src_range, chunk.num_lines)
    tgt_lines = read_lines(pair.tgt_path, chunk.tgt_range, chunk.num_lines)
    cleaner = PairCleaner(pair.src_path, pair.tgt_path, config.src_lang, config.tgt_lang,
                          config.lowercase, pair.pretokenized, config.strict, Counter())
    rows: dict[tuple[str, int], list[tuple[int, TokenizedPair]]] = defaultdict(list)
    rows_in: Counter = Counter()
    filtered: dict[str, Counter] = defaultdict(Counter)
    src_counts, tgt_counts = Counter(), Counter()
    for offset, (src, tgt) in enumerate(zip(src_lines, tgt_lines)):
        line_number = chunk.first_line + offset + 1
        split = pair.split or split_of(src, pair.split_fractions, config.split_seed)
        rows_in[split] += 1
        is_train = split == config.train_split
        result = cleaner.clean(src, tgt, line_number, config.max_len if is_train else 0)
        if isinstance(result, str):
            filtered[split][result] += 1
            continue
        if is_train:
            src_counts.update(result.src_tokens)
            tgt_counts.update(result.tgt_tokens)
        bucket = bucket_of(len(result.src_tokens), len(result.tgt_tokens), config.bucket_boundaries)
        rows[(split, bucket)].append((line_number, result))

    pieces = []
    for (split, bucket), items in sorted(rows.items()):
        keep_text = split != config.train_split
        table = pa.table({
            "src_tokens": [item.src_tokens for _, item in items],
            "tgt_tokens": [item.tgt_tokens for _, item in items],
            "input": [pair_index] * len(items),
            "line": [line for line, _ in items],
            "src_text": [item.src_raw if keep_text else None for _, item in items],
            "tgt_text": [item.tgt_raw if keep_text else None for _, item in items],
        }, schema=TOKENIZED_SCHEMA)
        path = work_dir / f"{split}-b{bucket:02d}.arrow"
        write_table(table, path)
        pieces.append({"split": split, "bucket": bucket, "file": path.name, "rows": len(items)})
    _write_counts(src_counts, tgt_counts, work_dir / COUNTS)

    receipt = {
        "pair_index": pair_index,
        "chunk_index": chunk.chunk_index,
        "rows_in": dict(sorted(rows_in.items())),
        "filtered": {split: dict(sorted(c.items())) for split, c in sorted(filtered.items())},
        "normalized": dict(sorted(cleaner.normalized.items())),
        "pieces": pieces,
    }
    write_atomically(receipt_path, json.dumps(receipt).encode())  # the receipt last: it certifies every piece above
    return receipt


def _write_counts(src_counts: Counter, tgt_counts: Counter, path: Path) -> None:
    words = list(src_counts) + list(tgt_counts)
    table = pa.table({
        "side": pa.array([0] * len(src_counts) + [1] * len(tgt_counts), pa.int8()),
        "word": pa.array(words, pa.string()),
        "count": pa.array(list(src_counts.values()) + list(tgt_counts.values()), pa.int64()),
    })
    write_table(table, path)


def read_counts(path: Path) -> tuple[Counter, Counter]:
    table = read_table(Path(path)).to_pydict()
    sides = (Counter(), Counter())
    for side, word, count in zip(table["side"], table["word"], table["count"]):
        sides[side][word] += count
    return sides


def encode_shard(plan: ShardPlan, src_codec: CodecFiles, tgt_codec: CodecFiles, *, reverse_source: bool,
                 out_dir: Path) -> dict:
    """Pass 2 for one shard: tokens → ids, words or subword pieces (source reversed, target wrapped in
    <s> … </s>)."""
    src_vocab, tgt_vocab = load_codec(out_dir, src_codec), load_codec(out_dir, tgt_codec)
    parts = [read_table(Path(path)).slice(start, stop - start) for path, start, stop in plan.slices]
    tokens = pa.concat_tables(parts).to_pydict()
    src_ids = [src_vocab.encode(words) for words in tokens["src_tokens"]]
    if reverse_source:
        src_ids = [ids[::-1] for ids in src_ids]
    tgt_ids = [[BOS_ID, *tgt_vocab.encode(words), EOS_ID] for words in tokens["tgt_tokens"]]
    table = pa.table({
        "src_ids": src_ids,
        "tgt_ids": tgt_ids,
        "src_len": [len(ids) for ids in src_ids],
        "tgt_len": [len(ids) - 2 for ids in tgt_ids],
        "input": tokens["input"],
        "line": tokens["line"],
        "src_text": tokens["src_text"] if plan.keep_text else [None] * len(src_ids),
        "tgt_text": tokens["tgt_text"] if plan.keep_text else [None] * len(src_ids),
    }, schema=SCHEMA)
    sha256 = write_table(table, out_dir / plan.path)
    return {
        "split": plan.split,
        "bucket": plan.bucket,
        "path": plan.path,
        "rows": table.num_rows,
        "sha256": sha256,
        "src_words": sum(len(ids) for ids in src_ids),
        "tgt_words": sum(len(ids) - 2 for ids in tgt_ids),
        "src_unk": sum(ids.count(UNK_ID) for ids in src_ids),
        "tgt_unk": sum(ids.count(UNK_ID) for ids in tgt_ids),
    }
