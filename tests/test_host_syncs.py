"""How often a step makes the host wait for the device (counted on CPU; `sync_counter.py` says how).

Budgets, stated:
- one single-device training step reads nothing from the device (0): the lengths stay on the host with
  the batch, the loss is taken over every position with padding zeroed instead of a boolean mask, the
  gradient norm and its clipping stay on the device, and the loop reads the loss and the norm once a log
  line;
- a wavefront stage's step reads nothing (0): the real positions of a decoder chunk are indices built on
  the host from the host lengths and moved without blocking, and the step's loss and gradient norm stay on
  the device (the real engine under torchrun is counted in test_pipeline.py, its optimizer step included);
- a 1F1B stage reads its micro-batch's lengths once (DeepSpeed moves every input to the device), not once a
  layer, and its softmax runs over every position with padding zeroed (at most 1); DeepSpeed's own 1F1B
  messaging adds its shape exchange and its blocking input copies (docs/platform.md);
- beam search reads one flag a decoder step (are all sentences done?) and its results once at the end (5).
"""

from __future__ import annotations

import torch
from conftest import batch_of
from sync_counter import (
    BEAM_RESULT_READS,
    BEAM_STEP_BUDGET,
    ONE_F_ONE_B_STAGE_BUDGET,
    TRAIN_STEP_BUDGET,
    WAVEFRONT_STEP_BUDGET,
    SyncCounter,
)

from dist_s2s.config import ModelConfig, load_config
from dist_s2s.decode import beam
from dist_s2s.model.seq2seq import Seq2Seq
from dist_s2s.train.step import SingleDeviceSteps


def small_model(dropout: float = 0.0) -> Seq2Seq:
    torch.manual_seed(0)
    return Seq2Seq(ModelConfig(embedding_dim=8, hidden_size=8, num_layers=2, softmax_shards=2, dropout=dropout), 40, 40)


def test_the_counter_counts_what_would_wait_on_a_gpu_and_nothing_on_host_values():
    weight, lengths = torch.randn(4, 3), torch.tensor([3, 1, 2, 2])
    with SyncCounter(device=[weight]) as counter:
        hidden = weight * 2  # computed from a device tensor: on the device
        float(hidden[0, 0])  # a read
        hidden[hidden > 0]  # a boolean mask: its size is the device's to tell
        int(lengths.max())  # host, and what is computed from it
        (lengths + 1).tolist()
        hidden[lengths.clamp(max=3)]  # a host index into a device tensor: copied from pageable memory
        moved = lengths.to(weight.device, non_blocking=True)  # moved without blocking: on the device now
        hidden[moved.clamp(max=3)]
        lengths.to(weight.device)  # moved, and the host waits for the copy
        on_host = moved.cpu()  # read back once...
        on_host.tolist()  # ...then free
        torch.arange(3, device=weight.device).sum().item()  # made on the device
    assert dict(counter.calls) == {"__float__": 1, "boolean index": 1, "host tensor in a device op": 1,
                                   "blocking host → device copy": 1, "cpu": 1, "item": 1}


def test_packing_by_host_lengths_waits_for_the_device():
    """What `over_lengths` did before: `pack_padded_sequence` / `pad_packed_sequence` move their index
    tensors between host and device."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    model = small_model()
    inputs, lengths = torch.randn(3, 5, 8), torch.tensor([5, 2, 3])
    with SyncCounter(device=[*model.parameters(), inputs]) as counter:
        packed = pack_padded_sequence(inputs, lengths, batch_first=True, enforce_sorted=False)
        outputs, _ = model.encoder[0].lstm(packed)
        pad_packed_sequence(outputs, batch_first=True)
    assert counter.total > 0, dict(counter.where)


def test_one_training_step_on_one_device_reads_nothing_from_the_device():
    for dropout, optimizer in ((0.0, "sgd"), (0.3, "sgd"), (0.3, "adam")):  # Adam's step counts live on the host
        config = load_config(None, ["--model.embedding_dim=8", "--model.hidden_size=8", "--model.num_layers=2",
                                    "--model.softmax_shards=2", "--train.device=cpu", f"--model.dropout={dropout}",
                                    f"--optim.optimizer={optimizer}"])
        torch.manual_seed(0)
        model = Seq2Seq(config.model, 40, 40)
        steps = SingleDeviceSteps(config, model, torch.device("cpu"))
        batch = batch_of([7, 5, 5, 2, 1], [3, 6, 1, 4, 2])  # unequal lengths: every span of over_lengths runs
        steps.train_step(batch, 0.7, 1)
        moments = [t for kept in steps.optimizer.state.values() for t in kept.values() if t.dim() > 0]
        with SyncCounter(device=[*model.parameters(), *model.buffers(), *moments]) as counter:
            result = steps.train_step(batch, 0.7, 2)
        assert counter.total <= TRAIN_STEP_BUDGET, (dropout, optimizer, dict(counter.where))
        assert isinstance(result.nll, torch.Tensor) and isinstance(result.grad_norm, torch.Tensor)


def test_a_wavefront_stages_operations_read_nothing_from_the_device():
    from dist_s2s.model.dropout import step_dropout
    from dist_s2s.parallel.placement import placement
    from dist_s2s.parallel.wavefront.operations import StageOperations
    from dist_s2s.parallel.wavefront.program import batch_chunks, step_program
    from dist_s2s.parallel.wavefront.transport import LocalTransport

    model = small_model(dropout=0.3)
    host_batch = batch_of([7, 5, 5, 2, 1], [3, 6, 1, 4, 2])
    for name in ("colocated", "chain"):
        layout = placement(name, 2, 2, 2)
        with SyncCounter(device=[*model.parameters()]) as counter:
            batch = host_batch.to(torch.device("cpu"))  # the ids to the device, the lengths stay
            chunks = batch_chunks(batch, 2)
            transport = LocalTransport()
            dropout = step_dropout(0.3, batch.lines, seed=0, step=1, device=torch.device("cpu"))
            stages = [StageOperations(model, layout, stage, batch=batch, chunks=chunks, loss_scale=0.2,
                                      transport=transport, dropout=dropout) for stage in range(layout.stages)]
            for op in step_program(layout, chunks):
                stages[op.stage].run(op)
        assert counter.total <= WAVEFRONT_STEP_BUDGET, (name, dict(counter.where))


def test_a_1f1b_stage_reads_its_lengths_once_a_micro_batch():
    from dist_s2s.parallel.one_f_one_b import unit_inputs
    from dist_s2s.parallel.stages import pipeline_units

    model = small_model(dropout=0.3)
    units = pipeline_units(model)
    batch = batch_of([7, 5, 5, 2, 1], [3, 6, 1, 4, 2])
    for stage_units in (units[:2], units[2:3], units[3:]):  # embeddings + layer 0 | layer 1 | the shards
        inputs = unit_inputs(batch if stage_units[0] is units[0] else batch, seed=0, step=1)
        if stage_units[0] is not units[0]:  # what the stage below sends
            with torch.no_grad():
                for unit in units[:units.index(stage_units[0])]:
                    inputs = unit(inputs)
            inputs = tuple(t.detach().requires_grad_() if t.is_floating_point() else t for t in inputs)
        with SyncCounter(device=[*model.parameters(), *inputs]) as counter:  # DeepSpeed moved them all
            outputs = inputs
            for unit in stage_units:
                outputs = unit(outputs)
            floats = [t for t in (outputs if isinstance(outputs, tuple) else (outputs,)) if t.is_floating_point()]
            torch.autograd.backward(floats, [torch.ones_like(t) for t in floats])
        assert counter.total <= ONE_F_ONE_B_STAGE_BUDGET, (len(stage_units), dict(counter.where))


def test_a_beam_search_reads_one_flag_a_step_and_its_results_once(monkeypatch):
    model = small_model().eval()
    batch = batch_of([6, 5, 4, 2], [1, 1, 1, 1])
    calls = []
    step = beam.Ensemble.step
    monkeypatch.setattr(beam.Ensemble, "step", lambda self, *args: calls.append(1) or step(self, *args))
    with torch.no_grad(), SyncCounter(device=[*model.parameters(), batch.src]) as counter:
        beam.beam_search(beam.Ensemble([model]), batch.src, batch.src_lengths, 4, max_length_ratio=1.0,
                         extra_words=2)
    assert calls and counter.total <= BEAM_STEP_BUDGET * len(calls) + BEAM_RESULT_READS, (dict(counter.where),
                                                                                            len(calls))
