"""Arrow shards: the on-disk format between `prepare` and the trainer.

Arrow IPC files rather than Parquet: the loader memory-maps them and gathers any rows of a
batch with zero copies and no decoding, where Parquet would decompress whole row groups
for every random batch. The price is size (no compression), which matters little next to
the checkpoints of a 384M-parameter model.
"""

from __future__ import annotations

import bisect
import hashlib
import os
from pathlib import Path

import pyarrow as pa

SCHEMA = pa.schema([
    pa.field("src_ids", pa.list_(pa.int32()), nullable=False),
    pa.field("tgt_ids", pa.list_(pa.int32()), nullable=False),
    pa.field("src_len", pa.int32(), nullable=False),
    pa.field("tgt_len", pa.int32(), nullable=False),
    pa.field("input", pa.int16(), nullable=False),
    pa.field("line", pa.int64(), nullable=False),
    pa.field("src_text", pa.string()),
    pa.field("tgt_text", pa.string()),
])
"""`src_ids`: source word ids, reversed when data.reverse_source; `tgt_ids`: <s> words </s>;
`src_len`/`tgt_len`: word counts without specials (what words/s counts); `input`/`line`:
index into manifest `inputs` and 1-based line number, to trace any row to its text;
`src_text`/`tgt_text`: the raw lines, kept for evaluation splits only (null in train)."""

TOKENIZED_SCHEMA = pa.schema([
    pa.field("src_tokens", pa.list_(pa.string()), nullable=False),
    pa.field("tgt_tokens", pa.list_(pa.string()), nullable=False),
    pa.field("input", pa.int16(), nullable=False),
    pa.field("line", pa.int64(), nullable=False),
    pa.field("src_text", pa.string()),
    pa.field("tgt_text", pa.string()),
])
"""Intermediate pass-1 rows, before the vocabulary exists."""


def bucket_of(src_len: int, tgt_len: int, boundaries: list[int]) -> int:
    """Index of the first boundary ≥ the longer side; len(boundaries) for longer sentences."""
    return bisect.bisect_left(boundaries, max(src_len, tgt_len))


def write_table(table: pa.Table, path: Path) -> str:
    """Write an IPC file atomically (temp file + rename) and return its sha256.

    Streamed to the temporary file, never held whole in memory; a killed writer leaves only a `.tmp`
    file, never a truncated shard under the real name.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _temporary(path)
    with pa.OSFile(str(temporary), "wb") as sink:
        with pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=max(1, table.num_rows))
    with open(temporary, "rb+") as handle:
        os.fsync(handle.fileno())
    sha256 = sha256_file(temporary)
    os.replace(temporary, path)
    return sha256


def write_atomically(path: Path, data: bytes, durable: bool = True) -> None:
    """Write to a temporary file, flush it to disk (unless not `durable`), then rename it over `path`.

    Readers see the old file or the whole new one, never a part, however the writer dies; `durable=False`
    skips the fsync for a note rewritten every step, which needs to survive a killed process, not a lost disk.
    """
    temporary = _temporary(path)
    with open(temporary, "wb") as handle:
        handle.write(data)
        if durable:
            handle.flush()
            os.fsync(handle.fileno())
    os.replace(temporary, path)


def _temporary(path: Path) -> Path:
    return path.with_name(path.name + f".{os.getpid()}.tmp")


def read_table(path: Path, columns: list[str] | None = None) -> pa.Table:
    """Memory-map an IPC file: no copy, pages read on demand."""
    source = pa.memory_map(str(path), "r")
    table = pa.ipc.open_file(source).read_all()
    return table.select(columns) if columns else table


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
