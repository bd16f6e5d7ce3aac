"""Batches of similar-length sentences from memory-mapped shards, with a resumable cursor.

Paper §3.4: "we made sure that all sentences in a minibatch are roughly of the same length".
Each epoch is planned up front from the length columns alone: within every length bucket the
rows are shuffled (seeded by seed and epoch), sorted by (target, source) length inside pools
of `pool_batches` batches, and cut into batches (target first: every target position costs a
softmax row; docs/data.md has the padding either order leaves on Multi30k); then the
batch order is shuffled. The plan is a pure function of (seed, epoch), so the cursor
`(epoch, next_batch)` is the whole state a resumed run needs.

With data parallelism every replica plans the same global batches and takes its own
interleaved slice of each, so N replicas see exactly the sentences one device would.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa

from dist_s2s.data.batch import Batch, batch_from_table
from dist_s2s.data.manifest import MANIFEST, ShardEntry, load_manifest
from dist_s2s.data.shards import read_table
from dist_s2s.errors import UserError


class BatchLoader:
    def __init__(self, out_dir: str | Path, split: str, batch_size: int, *, seed: int = 0,
                 shuffle: bool = True, replica: int = 0, replicas: int = 1, pool_batches: int = 32):
        if not 0 <= replica < replicas:
            raise ValueError(f"replica {replica} is not in [0, {replicas})")
        if batch_size < 2 * replicas:
            raise UserError(f"train.batch_size {batch_size} must be at least 2 × the {replicas} data-parallel replicas "
                            f"(the smallest batch of an epoch has batch_size/2 sentences)")
        self.out_dir = Path(out_dir)
        self.split = split
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.replica = replica
        self.replicas = replicas
        self.pool_batches = pool_batches
        self.manifest = load_manifest(self.out_dir)
        self.shards, self.buckets = self._open(self.manifest.shards_of(split))
        self.first_rows = np.cumsum([0] + [shard.num_rows for shard in self.shards])
        self.table = pa.concat_tables(self.shards)
        if self.table.num_rows < replicas:
            raise UserError(f"split {split!r} has {self.table.num_rows} sentences, fewer than {replicas} replicas")
        lengths = self.table.select(["src_len", "tgt_len"])
        self.src_len = lengths.column("src_len").to_numpy()
        self.tgt_len = lengths.column("tgt_len").to_numpy()
        self.epoch = 0
        self.next_batch = 0
        self._plan: list[np.ndarray] | None = None

    def _open(self, shards: list[ShardEntry]) -> tuple[list[pa.Table], list[np.ndarray]]:
        """Each shard's memory-mapped table, and the global row indices of each bucket."""
        tables, buckets, start = [], {}, 0
        for shard in shards:
            path = self.out_dir / shard.path
            if not path.is_file():
                raise UserError(f"shard missing: {path} (listed in {self.out_dir / MANIFEST})")
            table = read_table(path)
            if table.num_rows != shard.rows:
                raise UserError(f"shard {path} has {table.num_rows} rows, manifest says {shard.rows}")
            tables.append(table)
            buckets.setdefault(shard.bucket, []).append(np.arange(start, start + table.num_rows))
            start += table.num_rows
        return tables, [np.concatenate(rows) for _, rows in sorted(buckets.items())]

    @property
    def num_rows(self) -> int:
        return self.table.num_rows

    def plan(self, epoch: int) -> list[np.ndarray]:
        """The global batches of an epoch, as arrays of row indices; same for every replica.

        Buckets are laid end to end, shortest first, so only a bucket's last batch mixes in the
        next bucket's shortest sentences; every batch is full but the last, whose remainder is
        shared evenly with the batch before it, so no batch has fewer than batch_size/2 rows.
        """
        rng = np.random.default_rng([self.seed, epoch])
        pool = self.batch_size * self.pool_batches
        ordered = []
        for rows in self.buckets:
            if self.shuffle:
                rows = rng.permutation(rows)
            for start in range(0, len(rows), pool):
                chunk = rows[start:start + pool]
                ordered.append(chunk[np.lexsort((self.src_len[chunk], self.tgt_len[chunk]))])
        ordered = np.concatenate(ordered)
        full, remainder = divmod(len(ordered), self.batch_size)
        batches = [ordered[i * self.batch_size:(i + 1) * self.batch_size] for i in range(full)]
        if remainder:
            tail = ordered[full * self.batch_size:]
            if batches:
                tail = np.concatenate([batches.pop(), tail])
                batches += np.array_split(tail, 2)
            else:
                batches.append(tail)
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def batches_per_epoch(self) -> int:
        return len(self._epoch_plan())

    def _epoch_plan(self) -> list[np.ndarray]:
        if self._plan is None:
            self._plan = self.plan(self.epoch)
        return self._plan

    def __iter__(self) -> Iterator[Batch]:
        """The rest of the current epoch; the cursor moves past a batch as it is handed out."""
        plan = self._epoch_plan()
        while self.next_batch < len(plan):
            rows = plan[self.next_batch]
            self.next_batch += 1
            yield self._read(rows)
        self.epoch += 1
        self.next_batch = 0
        self._plan = None

    def _read(self, rows: np.ndarray) -> Batch:
        batch = batch_from_table(self._take(np.sort(rows)), step_sentences=len(rows))
        if self.replicas == 1:
            return batch
        return replace(batch, step_totals=batch.totals()).split(self.replicas)[self.replica]

    def _take(self, rows: np.ndarray) -> pa.Table:
        """Sorted global rows, read shard by shard: taking from the table over all shards would make Arrow join
        every shard's list columns first (a take from a chunked nested column concatenates its chunks), a
        copy of the whole split for each batch: 0.3 s a batch at 12M pairs."""
        shard_of = np.searchsorted(self.first_rows, rows, side="right") - 1
        bounds = np.flatnonzero(np.diff(shard_of)) + 1
        parts = [self.shards[shard_of[run[0]]].take(pa.array(rows[run] - self.first_rows[shard_of[run[0]]]))
                 for run in np.split(np.arange(len(rows)), bounds)]
        return pa.concat_tables(parts)

    @property
    def epoch_progress(self) -> float:
        """Epochs completed, fractional: what the paper's learning-rate schedule is written in."""
        return self.epoch + self.next_batch / max(1, len(self._epoch_plan()))

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "next_batch": self.next_batch, "seed": self.seed,
                "num_rows": self.num_rows, "batch_size": self.batch_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        for key in ("seed", "num_rows", "batch_size"):
            if state[key] != getattr(self, key):
                raise UserError(f"cannot resume: data loader {key} was {state[key]}, is now {getattr(self, key)}")
        self.epoch, self.next_batch, self._plan = state["epoch"], state["next_batch"], None
