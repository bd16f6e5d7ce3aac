"""Batches: similar lengths, every sentence once per epoch, seeded, resumable, split across replicas."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dist_s2s.data.loader import BatchLoader
from dist_s2s.data.vocab import BOS_ID, EOS_ID, PAD_ID
from dist_s2s.errors import UserError


def loader(config, **kwargs) -> BatchLoader:
    return BatchLoader(config.data.out_dir, "train", kwargs.pop("batch_size", 16), seed=kwargs.pop("seed", 1),
                       **kwargs)


def keys(batch) -> list[tuple[int, int]]:
    return [tuple(row) for row in batch.lines.tolist()]


def test_an_epoch_yields_every_sentence_exactly_once(prepared_tiny):
    train = loader(prepared_tiny)
    seen = [key for batch in train for key in keys(batch)]
    assert len(seen) == len(set(seen)) == train.num_rows
    assert train.epoch == 1 and train.next_batch == 0


def padding_fraction(train: BatchLoader, batches) -> float:
    padded = used = 0
    for rows in batches:
        src, tgt = train.src_len[rows], train.tgt_len[rows] + 1
        padded += len(rows) * (src.max() + tgt.max())
        used += src.sum() + tgt.sum()
    return 1 - used / padded


def test_batches_of_similar_length_pad_a_fraction_of_what_random_batches_pad(prepared_tiny):
    train = loader(prepared_tiny, batch_size=64)
    shuffled = np.random.default_rng(0).permutation(train.num_rows)
    random_batches = [shuffled[i:i + 64] for i in range(0, len(shuffled), 64)]
    assert padding_fraction(train, train.plan(0)) < padding_fraction(train, random_batches) / 8


def test_batch_sizes_stay_between_half_and_full(prepared_tiny):
    sizes = [len(b) for b in loader(prepared_tiny, batch_size=128)]
    assert max(sizes) == 128 and min(sizes) >= 64


def test_same_seed_same_order_other_seed_or_epoch_other_order(prepared_tiny):
    first = [keys(b) for b in loader(prepared_tiny, seed=3)]
    assert first == [keys(b) for b in loader(prepared_tiny, seed=3)]
    assert first != [keys(b) for b in loader(prepared_tiny, seed=4)]
    two_epochs = loader(prepared_tiny, seed=3)
    list(two_epochs)
    assert first != [keys(b) for b in two_epochs]


def test_resuming_from_state_dict_continues_with_the_same_batches(prepared_tiny):
    uninterrupted = loader(prepared_tiny)
    list(uninterrupted)  # epoch 0
    expected = [keys(b) for b in uninterrupted][10:]
    interrupted = loader(prepared_tiny)
    list(interrupted)
    for _, _ in zip(range(10), interrupted):
        pass
    state = interrupted.state_dict()
    resumed = loader(prepared_tiny)
    resumed.load_state_dict(state)
    assert [keys(b) for b in resumed] == expected
    assert resumed.epoch == 2


def test_resume_refuses_a_different_batch_size(prepared_tiny):
    state = loader(prepared_tiny, batch_size=16).state_dict()
    with pytest.raises(UserError, match="batch_size was 16, is now 32"):
        loader(prepared_tiny, batch_size=32).load_state_dict(state)


def test_replicas_split_each_global_batch_between_them(prepared_tiny):
    single = list(loader(prepared_tiny))
    replicas = [loader(prepared_tiny, replica=r, replicas=2) for r in range(2)]
    for whole, (a, b) in zip(single, zip(*replicas)):
        assert sorted(keys(a) + keys(b)) == sorted(keys(whole))
        assert a.step_sentences == b.step_sentences == len(whole), "the loss divides by the global batch"
        assert a.step_totals == b.step_totals == whole.totals(), "each replica knows the step's counts: no all-reduce"


def test_padding_and_target_shift(prepared_tiny):
    batch = next(iter(loader(prepared_tiny)))
    for row in range(len(batch)):
        n_src, n_tgt = int(batch.src_lengths[row]), int(batch.tgt_lengths[row])
        assert (batch.src[row, n_src:] == PAD_ID).all() and (batch.src[row, :n_src] != PAD_ID).all()
        assert batch.tgt_in[row, 0] == BOS_ID and batch.tgt_out[row, n_tgt - 1] == EOS_ID
        assert torch.equal(batch.tgt_in[row, 1:n_tgt], batch.tgt_out[row, :n_tgt - 1])
        assert (batch.tgt_in[row, n_tgt:] == PAD_ID).all() and (batch.tgt_out[row, n_tgt:] == PAD_ID).all()
    assert list(batch.src_lengths) == sorted(batch.src_lengths.tolist(), reverse=True)
    assert batch.words == int(batch.src_lengths.sum() + batch.tgt_lengths.sum()) - len(batch)


def test_missing_prepared_data_says_to_run_prepare(tmp_path):
    with pytest.raises(UserError, match="run `dist-s2s prepare`"):
        BatchLoader(tmp_path, "train", 16)


def test_unknown_split_lists_the_known_ones(prepared_tiny):
    with pytest.raises(UserError, match="split 'test2099' is not in the prepared data .*test2016"):
        BatchLoader(prepared_tiny.data.out_dir, "test2099", 16)


def test_reading_one_batch_ahead_feeds_the_same_batches_with_the_cursor_after_each(prepared_tiny):
    from dist_s2s.data.feed import BatchFeed

    plain, ahead = loader(prepared_tiny, batch_size=256), loader(prepared_tiny, batch_size=256)
    per_epoch = plain.batches_per_epoch()
    straight, early = BatchFeed(plain), BatchFeed(ahead, torch.device("cpu"))
    try:
        for _ in range(per_epoch + 3):  # across an epoch boundary
            a, b = next(straight), next(early)
            assert torch.equal(a.batch.src, b.batch.src) and a.cursor == b.cursor
            assert (a.epoch_before, a.epoch_after) == (b.epoch_before, b.epoch_after)
        early.pending.result()  # the read ahead has happened
        assert ahead.state_dict()["next_batch"] == 4, "the loader itself ran one batch ahead"
    finally:
        early.close()
    assert b.cursor["epoch"] == 1 and b.cursor["next_batch"] == 3
    resumed = loader(prepared_tiny, batch_size=256)
    resumed.load_state_dict(b.cursor)
    assert torch.equal(next(BatchFeed(resumed)).batch.src, next(straight).batch.src), "resume continues after it"


_MEASURE_READ = """
import json, sys
import pyarrow as pa
from dist_s2s.data.loader import BatchLoader
train = BatchLoader(sys.argv[1], "train", 64, seed=1)
batch = next(iter(train))
ids = train.table.select(["src_ids", "tgt_ids"])
print(json.dumps({"peak": pa.default_memory_pool().max_memory(), "shards": ids.column(0).num_chunks,
                  "split_ids_bytes": sum(column.nbytes for column in ids.columns)}))
"""


def test_reading_a_batch_touches_the_shards_it_needs_not_the_whole_split(prepared_tiny):
    """A batch is taken shard by shard: Arrow's take over the table of all shards would first join every
    shard's id lists (a copy of the whole split, 0.3 s a batch at 12M pairs). Arrow's peak allocation in a
    fresh process, after opening the split and reading one batch, stays a small fraction of the split."""
    import json
    import subprocess
    import sys

    measured = json.loads(subprocess.run([sys.executable, "-c", _MEASURE_READ, prepared_tiny.data.out_dir],
                                         check=True, capture_output=True, text=True).stdout)
    assert measured["shards"] > 1
    assert measured["peak"] < measured["split_ids_bytes"] / 4, measured  # the length columns are read whole
