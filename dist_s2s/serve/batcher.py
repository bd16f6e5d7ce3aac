"""Dynamic batching: requests that arrive together are decoded together, in one batched beam search.

A request's sentences join a queue; one decoding thread takes the oldest request and gathers the requests
with the same decoding options (beam, n-best, length penalty) that join it, up to `max_batch` sentences,
then decodes them all in one call. The batch closes at `max_batch` sentences, when no request has joined it
for `batch_wait_s` (a quiet gap), or `batch_max_wait_s` after it opened (when its first request arrived or
the decoder became free, whichever is later). After a batch the gap counts only once as many requests have
arrived as that batch answered: clients that wait for their answer before sending again (an application
translating a document sentence by sentence) come back one by one over tens of milliseconds as the answers
go out and the new requests are read. Measured with benchmarks/serve_load.py at 32 such clients: a fixed
5 ms wait from the first of them split them into a small batch and a large one (mean 3.2 sentences), and a
quiet gap alone kept them in two groups of 16 that took turns, each queued whole while the other decoded. A
lone request pays one gap; a server under concurrent load decodes batches as `translate` does instead of
one sentence at a time. A request whose client went away before its batch started is dropped unseen; the
queue's size is bounded (`Overloaded` past `max_queued` sentences).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Options:
    """What must be the same for sentences to share a beam search."""

    beam: int
    nbest: int
    length_penalty: float


@dataclass
class Job:
    sources: list[list[int]]
    options: Options
    queued_at: float = field(default_factory=time.monotonic)
    result: Future = field(default_factory=Future)
    """Set to one list of hypotheses per source, in order, or to the decoder's exception."""

    def cancel(self) -> None:
        """The client went away: skip it if its batch has not started (a started batch finishes)."""
        self.result.cancel()


class Overloaded(Exception):
    """More sentences queued than the server takes."""


Decode = Callable[[list[list[int]], Options], list[list]]
"""Source id lists → each one's hypotheses (a batched beam search)."""


@dataclass
class BatchStats:
    batches: int = 0
    sentences: int = 0
    largest: int = 0
    dropped_requests: int = 0
    sizes: deque = field(default_factory=lambda: deque(maxlen=1000))
    """The sentence counts of the latest batches."""

    def as_dict(self) -> dict:
        return {"batches": self.batches, "sentences": self.sentences, "largest_batch": self.largest,
                "dropped_requests": self.dropped_requests,
                "mean_batch": round(self.sentences / self.batches, 2) if self.batches else 0.0}


class Batcher:
    """Owns the decoding thread; `submit` from any thread, `close` once."""

    def __init__(self, decode: Decode, *, max_batch: int, batch_wait_s: float, max_queued: int,
                 batch_max_wait_s: float | None = None):
        self.decode, self.max_batch, self.max_queued = decode, max_batch, max_queued
        self.batch_wait_s = batch_wait_s
        self.batch_max_wait_s = batch_wait_s if batch_max_wait_s is None else max(batch_wait_s, batch_max_wait_s)
        self.stats = BatchStats()
        self._queue: deque[Job] = deque()
        self._queued_sentences = 0
        self._ready = threading.Condition()
        self._closed = False
        self._free_since = 0.0
        """When the decoder last finished a batch: clients it answered come back from then on."""
        self._answered = 0
        """How many requests that batch answered: as many may be on their way back."""
        self._thread = threading.Thread(target=self._run, name="decoder", daemon=True)
        self._thread.start()

    def submit(self, sources: list[list[int]], options: Options) -> Job:
        job = Job(sources, options)
        with self._ready:
            if self._closed:
                raise Overloaded("the server is shutting down")
            if self._queued_sentences + len(sources) > self.max_queued:
                raise Overloaded(f"{self._queued_sentences} sentences are waiting to be decoded (serve.max_queued="
                                 f"{self.max_queued}): try again shortly")
            self._queue.append(job)
            self._queued_sentences += len(sources)
            self._ready.notify()
        return job

    @property
    def queued_sentences(self) -> int:
        return self._queued_sentences

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify()
        self._thread.join()

    def _take_batch(self) -> list[Job] | None:
        """The oldest live request and the ones with its options that join it, up to max_batch, until none has
        joined for batch_wait_s or batch_max_wait_s has passed, both counted from when the first arrived or the
        decoder became free, whichever is later."""
        with self._ready:
            while not self._closed and not self._queue:
                self._ready.wait()
            if self._closed:
                return None
            first = self._queue.popleft()
            self._queued_sentences -= len(first.sources)
            if first.result.cancelled():  # its client left: no batch waits for company on its behalf
                self.stats.dropped_requests += 1
                return []
            opened = max(first.queued_at, self._free_since)  # the batch starts gathering here
            batch, size, latest = [first], len(first.sources), opened
            returned = int(first.queued_at >= self._free_since)  # requests sent since the last answers went out
            closes_at = opened + self.batch_max_wait_s
            while size < self.max_batch:
                joining = next((job for job in self._queue if job.options == first.options
                                and size + len(job.sources) <= self.max_batch), None)
                if joining is not None:
                    self._queue.remove(joining)
                    self._queued_sentences -= len(joining.sources)
                    batch.append(joining)
                    size += len(joining.sources)
                    latest = max(latest, joining.queued_at)
                    returned += joining.queued_at >= self._free_since
                    continue
                # until as many requests have come in as the last batch answered, only the longest wait ends it
                quiet_at = latest + self.batch_wait_s if returned >= self._answered else closes_at
                left = min(quiet_at, closes_at) - time.monotonic()
                if left <= 0:
                    break
                self._ready.wait(left)
            return batch

    def _run(self) -> None:
        while (batch := self._take_batch()) is not None:
            live = [job for job in batch if job.result.set_running_or_notify_cancel()]  # a cancelled one: False
            self.stats.dropped_requests += len(batch) - len(live)
            if not live:
                continue
            sources = [ids for job in live for ids in job.sources]
            try:
                found = self.decode(sources, live[0].options)
            except Exception as error:  # a decoding failure answers its requests, not the server
                log.exception("serve: decoding a batch of %d sentences failed", len(sources))
                for job in live:
                    job.result.set_exception(error)
                continue
            self._free_since, self._answered = time.monotonic(), len(live)
            self.stats.batches += 1
            self.stats.sentences += len(sources)
            self.stats.largest = max(self.stats.largest, len(sources))
            self.stats.sizes.append(len(sources))
            start = 0
            for job in live:
                job.result.set_result(found[start:start + len(job.sources)])
                start += len(job.sources)
