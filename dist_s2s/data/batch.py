"""A batch of sentence pairs as padded id tensors, the form the model and its stages consume."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import pyarrow as pa
import torch

from dist_s2s.data.vocab import PAD_ID
from dist_s2s.device import to_device

HOST_FIELDS = ("src_lengths", "tgt_lengths", "lines")


@dataclass
class Batch:
    src: torch.Tensor
    """[B, S] source ids (reversed when the data was prepared so), right-padded with <pad>."""
    src_lengths: torch.Tensor
    """[B] source words."""
    tgt_in: torch.Tensor
    """[B, T] decoder input: <s> w1 … wn, padded."""
    tgt_out: torch.Tensor
    """[B, T] decoder target: w1 … wn </s>, padded."""
    tgt_lengths: torch.Tensor
    """[B] predicted positions: target words + 1 for </s>."""
    lines: torch.Tensor
    """[B, 2] (input index, 1-based line) of each pair, to restore corpus order or trace a row."""
    step_sentences: int
    """Sentences in the whole optimizer step (all replicas), the loss divisor (paper §3.4: /128)."""
    step_totals: tuple[int, int, int] | None = None
    """(target tokens, words, sentences) of the whole step, every replica's slice counted: set by the loader when
    it splits a step between replicas, so each reports the step's counts without asking the others."""

    def __len__(self) -> int:
        return self.src.shape[0]

    @property
    def words(self) -> int:
        """Source + target words, padding and <s> </s> excluded: what words/s counts."""
        return int(self.src_lengths.sum() + self.tgt_lengths.sum() - len(self))

    def select(self, rows: torch.Tensor | slice) -> Batch:
        """The given rows, trimmed to their own longest sentences."""
        src_lengths, tgt_lengths = self.src_lengths[rows], self.tgt_lengths[rows]
        src_width = int(src_lengths.max()) if len(src_lengths) else 0
        tgt_width = int(tgt_lengths.max()) if len(tgt_lengths) else 0
        return Batch(
            src=self.src[rows, :src_width], src_lengths=src_lengths,
            tgt_in=self.tgt_in[rows, :tgt_width], tgt_out=self.tgt_out[rows, :tgt_width],
            tgt_lengths=tgt_lengths, lines=self.lines[rows], step_sentences=self.step_sentences,
            step_totals=self.step_totals,
        )

    def totals(self) -> tuple[int, int, int]:
        """(target tokens, words, sentences) of this batch."""
        return int(self.tgt_lengths.sum()), self.words, len(self)

    def split(self, parts: int) -> list[Batch]:
        """Interleaved slices (rows i, i+parts, …): for data replicas or micro-batches of similar cost."""
        if parts > len(self):
            raise ValueError(f"cannot split a batch of {len(self)} sentences into {parts} parts")
        return [self.select(torch.arange(part, len(self), parts)) for part in range(parts)]

    def pin_memory(self) -> Batch:
        """The device-bound tensors in page-locked memory, so a copy to a GPU need not block the host."""
        pinned = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in pinned.items():
            if isinstance(value, torch.Tensor) and name not in HOST_FIELDS:
                pinned[name] = value.pin_memory()
        return Batch(**pinned)

    def to(self, device: torch.device | str) -> Batch:
        """The ids on `device`; the lengths and line numbers stay on the host, the one copy of them a batch
        has: the encoder's packing and the step's counts read them without waiting for the device."""
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in moved.items():
            if isinstance(value, torch.Tensor) and name not in HOST_FIELDS:
                moved[name] = to_device(value, torch.device(device))
        return Batch(**moved)


def batch_from_table(table: pa.Table, step_sentences: int) -> Batch:
    """Pad a table of shard rows into a Batch, longest source first."""
    src, src_lengths = _padded(table.column("src_ids"))
    tgt, tgt_lengths = _padded(table.column("tgt_ids"))
    order = np.argsort(-src_lengths, kind="stable")
    src, src_lengths, tgt, tgt_lengths = src[order], src_lengths[order], tgt[order], tgt_lengths[order] - 1
    tgt_in = np.where(np.arange(tgt.shape[1] - 1)[None, :] < tgt_lengths[:, None], tgt[:, :-1], PAD_ID)
    lines = np.stack([table.column("input").to_numpy(), table.column("line").to_numpy()], axis=1)
    return Batch(
        src=torch.from_numpy(src),
        src_lengths=torch.from_numpy(src_lengths),
        tgt_in=torch.from_numpy(tgt_in),
        tgt_out=torch.from_numpy(np.ascontiguousarray(tgt[:, 1:])),
        tgt_lengths=torch.from_numpy(tgt_lengths),
        lines=torch.from_numpy(lines[order].astype(np.int64)),
        step_sentences=step_sentences,
    )


def _padded(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    array = column.combine_chunks()
    lengths = array.value_lengths().to_numpy().astype(np.int64)
    values = array.flatten().to_numpy().astype(np.int64)
    width = int(lengths.max()) if len(lengths) else 0
    padded = np.full((len(lengths), width), PAD_ID, dtype=np.int64)
    padded[np.arange(width)[None, :] < lengths[:, None]] = values
    return padded, lengths

