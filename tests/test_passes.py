"""The two passes as plain functions: pieces per (split, bucket), receipts, encoding."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from conftest import write_corpus

from dist_s2s.config import CorpusConfig, DataConfig
from dist_s2s.data.passes import ShardPlan, encode_shard, read_counts, tokenize_chunk
from dist_s2s.data.shards import read_table
from dist_s2s.data.sources import chunks, input_pairs, scan_file
from dist_s2s.data.subwords import CodecFiles
from dist_s2s.data.vocab import BOS_ID, EOS_ID, UNK_ID, Vocab


def first_chunk(tmp_path: Path, src: str, tgt: str, **data):
    write_corpus(tmp_path / "raw", "c/train", src, tgt)
    config = DataConfig(root=str(tmp_path / "raw"), corpora=[CorpusConfig(name="c", splits={"train": "c/train"})],
                        bucket_boundaries=[2, 4], **data)
    pair = input_pairs(config)[0]
    scan_src, scan_tgt = scan_file(pair.src_path, 100), scan_file(pair.tgt_path, 100)
    return pair, chunks(0, scan_src, scan_tgt, 100)[0], config


def test_a_chunk_is_split_into_length_buckets_and_counted(tmp_path):
    pair, chunk, config = first_chunk(tmp_path, "a b\na b c\nb\n", "x y\nx y z\nz\n")
    receipt = tokenize_chunk(pair, 0, chunk, config, work_dir=tmp_path / "work")
    assert {(p["bucket"], p["rows"]) for p in receipt["pieces"]} == {(0, 2), (1, 1)}
    src_counts, tgt_counts = read_counts(tmp_path / "work" / "counts.arrow")
    assert src_counts == Counter({"a": 2, "b": 3, "c": 1}) and tgt_counts == Counter({"x": 2, "y": 2, "z": 2})


def test_a_finished_chunk_is_reused_not_redone(tmp_path):
    pair, chunk, config = first_chunk(tmp_path, "a b\n", "x y\n")
    first = tokenize_chunk(pair, 0, chunk, config, work_dir=tmp_path / "work")
    pair.src_path.unlink()  # a redo would fail: the receipt must be enough
    assert tokenize_chunk(pair, 0, chunk, config, work_dir=tmp_path / "work") == first


def test_encoding_reverses_the_source_and_wraps_the_target(tmp_path):
    pair, chunk, config = first_chunk(tmp_path, "a b c\n", "x y\n")
    receipt = tokenize_chunk(pair, 0, chunk, config, work_dir=tmp_path / "work")
    Vocab.build(Counter({"a": 3, "b": 2}), 6).save(tmp_path / "src.txt")
    Vocab.build(Counter({"x": 1, "y": 1}), 6).save(tmp_path / "tgt.txt")
    piece = str(tmp_path / "work" / receipt["pieces"][0]["file"])
    record = encode_shard(ShardPlan("train", 1, "shards/s.arrow", ((piece, 0, 1),), keep_text=False),
                          CodecFiles("src.txt"), CodecFiles("tgt.txt"), reverse_source=True, out_dir=tmp_path)
    row = read_table(tmp_path / "shards" / "s.arrow").to_pylist()[0]
    assert row["src_ids"] == [UNK_ID, 5, 4], "c b a: c is not in the 2-word vocabulary"
    assert row["tgt_ids"] == [BOS_ID, 4, 5, EOS_ID]
    assert (record["src_unk"], record["src_words"], record["tgt_words"]) == (1, 3, 2)


def test_a_shard_encoded_column_at_a_time_equals_encoding_each_sentence_in_turn(tmp_path):
    """Arrow looks the words up a column at a time; the result is what `Vocab.encode` gives row by row,
    for rows sliced out of two pieces, out-of-vocabulary words and the specials written as text."""
    src = "a b c\nd\nb a <unk> a\nc c c c\n<s> a\n"
    tgt = "x y\nw\nz z y x\n</s> y\ny\n"
    pair, chunk, config = first_chunk(tmp_path, src, tgt, max_len=0)
    receipt = tokenize_chunk(pair, 0, chunk, config, work_dir=tmp_path / "work")
    src_vocab, tgt_vocab = Vocab.build(Counter({"a": 3, "b": 2}), 6), Vocab.build(Counter({"x": 1, "y": 1}), 6)
    src_vocab.save(tmp_path / "src.txt")
    tgt_vocab.save(tmp_path / "tgt.txt")
    slices = tuple((str(tmp_path / "work" / piece["file"]), 0, piece["rows"]) for piece in receipt["pieces"])
    slices = ((slices[0][0], 1, slices[0][2]), *slices[1:])  # the first piece's first row left out
    record = encode_shard(ShardPlan("train", 0, "shards/s.arrow", slices, keep_text=False),
                          CodecFiles("src.txt"), CodecFiles("tgt.txt"), reverse_source=True, out_dir=tmp_path)
    tokens = [row for path, start, stop in slices
              for row in read_table(Path(path)).slice(start, stop - start).to_pylist()]
    rows = read_table(tmp_path / "shards" / "s.arrow").to_pylist()
    assert [row["src_ids"] for row in rows] == [src_vocab.encode(t["src_tokens"])[::-1] for t in tokens]
    assert [row["tgt_ids"] for row in rows] == [[BOS_ID, *tgt_vocab.encode(t["tgt_tokens"]), EOS_ID] for t in tokens]
    assert [row["src_len"] for row in rows] == [len(t["src_tokens"]) for t in tokens]
    assert record["src_unk"] == sum(src_vocab.encode(t["src_tokens"]).count(UNK_ID) for t in tokens)
    assert record["rows"] == len(tokens) == 4


ENCODE_BYTES_PER_ID = 20
"""What encoding a shard may hold at its peak per id it writes: the ids themselves (4 bytes), their joined copy
and a slice's temporaries. Holding the shard's tokens as strings, as encoding the whole shard at once did, costs
about 30."""

_MEASURE_ENCODE = """
import json, sys, tracemalloc
from pathlib import Path
import pyarrow as pa
from dist_s2s.data.passes import ShardPlan, encode_shard
from dist_s2s.data.subwords import CodecFiles
slices, out_dir = json.loads(sys.argv[1]), Path(sys.argv[2])
tracemalloc.start()
record = encode_shard(ShardPlan("train", 0, "shards/s.arrow", tuple(map(tuple, slices)), keep_text=False),
                      CodecFiles("src.txt"), CodecFiles("tgt.txt"), reverse_source=True, out_dir=out_dir)
print(json.dumps({"peak": tracemalloc.get_traced_memory()[1] + pa.default_memory_pool().max_memory(),
                  "ids": record["src_words"] + record["tgt_words"] + 2 * record["rows"]}))
"""


def test_encoding_a_shard_holds_a_slice_of_tokens_at_a_time_not_the_whole_shard(tmp_path):
    """A shard of 16 pass-1 slices of 40-word sentences: the encoder's peak (numpy's traced allocations plus
    Arrow's pool, measured in a fresh process) per id written stays at what the ids need, so a full shard of
    long sentences costs a worker no more per row than a short one (docs/data.md, prepare at 12M pairs)."""
    import json
    import subprocess
    import sys

    import numpy as np
    import pyarrow as pa

    from dist_s2s.data.shards import TOKENIZED_SCHEMA, write_table

    words = [f"w{i}" for i in range(3_000)]
    rng = np.random.default_rng(0)
    slices = []
    for index in range(16):
        rows = [[words[i] for i in rng.integers(0, len(words), 40)] for _ in range(2_000)]
        path = tmp_path / f"piece-{index}.arrow"
        write_table(pa.table({"src_tokens": rows, "tgt_tokens": rows, "input": [0] * len(rows),
                              "line": list(range(len(rows))), "src_text": [None] * len(rows),
                              "tgt_text": [None] * len(rows)}, schema=TOKENIZED_SCHEMA), path)
        slices.append((str(path), 0, len(rows)))
    for side in ("src", "tgt"):
        Vocab.build(Counter(words[:2_000]), 2_004).save(tmp_path / f"{side}.txt")
    measured = subprocess.run([sys.executable, "-c", _MEASURE_ENCODE, json.dumps(slices), str(tmp_path)],
                              check=True, capture_output=True, text=True)
    result = json.loads(measured.stdout)
    assert result["ids"] == 16 * 2_000 * (40 + 42)
    assert result["peak"] / result["ids"] <= ENCODE_BYTES_PER_ID, (
        f"encoding held {result['peak'] / result['ids']:.1f} bytes per id written (at most {ENCODE_BYTES_PER_ID})")
