"""The training loop's batches: the loader's, epoch after epoch, each with the cursor to save after it.

On a GPU the next batch is prepared while the device computes this one: read from the shards on a
background thread, copied into page-locked (pinned) host memory and sent to the device without
blocking. The loader's own cursor then runs one batch ahead, so every batch carries the cursor and
epoch progress *after it*: what a checkpoint taken after its step must record, and what the
learning rate is read from, exactly as without the read-ahead.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from dist_s2s.data.batch import Batch
from dist_s2s.data.loader import BatchLoader


@dataclass
class FedBatch:
    batch: Batch
    epoch_before: float
    """Epochs completed before this batch (the learning rate's schedule is read here)."""
    epoch_after: float
    cursor: dict[str, Any]
    """The loader's state after this batch: resuming from it continues with the next one."""


class BatchFeed:
    """Endless iteration over `loader`; with a `device` one batch is read ahead on a thread (and, on CUDA,
    pinned and sent to the device); the trainer passes one only for CUDA."""

    def __init__(self, loader: BatchLoader, device: torch.device | None = None):
        self.loader, self.device = loader, device
        self.batches: Iterator[Batch] = iter(loader)
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch-feed") if device else None
        self.pending = self.pool.submit(self._read) if self.pool else None

    def _read(self) -> FedBatch:
        before = self.loader.epoch_progress
        try:
            batch = next(self.batches)
        except StopIteration:  # the epoch is over: the next one's plan
            self.batches = iter(self.loader)
            before = self.loader.epoch_progress
            batch = next(self.batches)
        fed = FedBatch(batch, before, self.loader.epoch_progress, self.loader.state_dict())
        if self.device is not None and self.device.type == "cuda":
            fed.batch = fed.batch.pin_memory().to(self.device)
        return fed

    def __iter__(self) -> BatchFeed:
        return self

    def __next__(self) -> FedBatch:
        if self.pool is None:
            return self._read()
        fed = self.pending.result()
        self.pending = self.pool.submit(self._read)
        return fed

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
