"""How often a step makes the host wait for the device (counted on CPU; `sync_counter.py` says how).

Budgets, stated: one single-device training step reads nothing from the device (0): the lengths
stay on the host with the batch, the loss is taken over every position with padding zeroed instead
of a boolean mask, the gradient norm and its clipping stay on the device, and the loop reads the
loss and the norm once a log line. Beam search reads one flag a decoder step (are all sentences
done?) and its results once at the end (5 reads): its bookkeeping (complete hypotheses, scores, the
stop test) stays on the device. Before: 13.8 reads a step (124 over 9 steps).
"""

from __future__ import annotations

import torch
from sync_counter import SyncCounter
from test_wavefront import batch_of

from dist_s2s.config import ModelConfig, load_config
from dist_s2s.decode import beam
from dist_s2s.model.seq2seq import Seq2Seq
from dist_s2s.train.step import SingleDeviceSteps

TRAIN_STEP_BUDGET = 0
BEAM_STEP_BUDGET = 1
"""Per decoder step of a search: the stop test's flag."""
BEAM_RESULT_READS = 5
"""Once a search: the complete hypotheses' rankings, scores, lengths, words and member scores."""


def test_the_counter_counts_device_reads_and_not_host_tensors():
    device_value, host_value = torch.arange(4.0), torch.arange(4)
    with SyncCounter(host=[host_value]) as counter:
        float(device_value[0])
        device_value[device_value > 1]
        int(host_value.max())  # host by declaration, and what is computed from it
        (host_value + 1).tolist()
    assert dict(counter.calls) == {"__float__": 1, "boolean index": 1}


def test_one_training_step_on_one_device_reads_nothing_from_the_device():
    config = load_config(None, ["--model.embedding_dim=8", "--model.hidden_size=8", "--model.num_layers=2",
                                "--model.softmax_shards=2", "--train.device=cpu"])
    torch.manual_seed(0)
    steps = SingleDeviceSteps(config, Seq2Seq(config.model, 40, 40), torch.device("cpu"))
    batch = batch_of([7, 5, 5, 2, 1], [3, 6, 1, 4, 2])  # unequal lengths: the packed tail runs too
    steps.train_step(batch, 0.7, 1)
    with SyncCounter(host=[batch.src_lengths, batch.tgt_lengths, batch.lines]) as counter:
        result = steps.train_step(batch, 0.7, 1)
    assert counter.total <= TRAIN_STEP_BUDGET, dict(counter.calls)
    assert isinstance(result.nll, torch.Tensor) and isinstance(result.grad_norm, torch.Tensor)


def test_a_beam_search_reads_one_flag_a_step_and_its_results_once(monkeypatch):
    torch.manual_seed(0)
    model = Seq2Seq(ModelConfig(embedding_dim=8, hidden_size=8, num_layers=2, softmax_shards=2), 40, 40).eval()
    batch = batch_of([6, 5, 4, 2], [1, 1, 1, 1])
    calls = []
    step = beam.Ensemble.step
    monkeypatch.setattr(beam.Ensemble, "step", lambda self, *args: calls.append(1) or step(self, *args))
    with torch.no_grad(), SyncCounter(host=[batch.src_lengths]) as counter:
        beam.beam_search(beam.Ensemble([model]), batch.src, batch.src_lengths, 4, max_length_ratio=1.0,
                         extra_words=2)
    assert calls and counter.total <= BEAM_STEP_BUDGET * len(calls) + BEAM_RESULT_READS, (dict(counter.calls),
                                                                                            len(calls))
