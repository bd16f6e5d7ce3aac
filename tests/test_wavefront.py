"""The wavefront schedule's program and its arithmetic, in one process (the multi-process runs are in
test_pipeline.py and test_pipeline_training.py)."""

from __future__ import annotations

import pytest
import torch
from conftest import batch_of, model_of, single_device_gradients, wavefront_gradients

from dist_s2s.bench.wavefront_sim import ProgramCosts, operation_costs, simulate_program
from dist_s2s.parallel.placement import placement
from dist_s2s.parallel.wavefront.program import step_program, time_chunks


def test_chain_with_layers_plus_shards_stages_is_the_papers_layout():
    paper = placement("chain", 4, 4, 8)
    assert paper.layers == ((0,), (1,), (2,), (3,), (), (), (), ())
    assert paper.shards == ((), (), (), (), (0,), (1,), (2,), (3,))
    assert paper.top_stage == 3 and paper.shard_stages == [4, 5, 6, 7]


def test_colocated_gives_every_stage_layers_and_a_share_of_the_vocabulary():
    two = placement("colocated", 2, 2, 2)
    assert two.layers == ((0,), (1,)) and two.shards == ((0,), (1,))
    assert placement("colocated", 4, 4, 2).layers == ((0, 1), (2, 3))


def test_time_chunks_cover_source_then_target():
    chunks = time_chunks(7, 5, 3)
    assert [(c.decoder, c.start, c.stop) for c in chunks] == [
        (False, 0, 3), (False, 3, 6), (False, 6, 7), (True, 0, 3), (True, 3, 5)]


@pytest.mark.parametrize("name, stages, backward", [("chain", 8, True), ("colocated", 2, True), ("chain", 4, False)])
def test_every_message_is_sent_once_and_received_once_after_it_is_sent(name, stages, backward):
    layout = placement(name, 4, 4, stages)
    program = step_program(layout, time_chunks(7, 9, 2), backward=backward)
    sent_at = {}
    for index, op in enumerate(program):
        for message in op.sends:
            assert message not in sent_at and message.src == op.stage
            sent_at[message] = index
    received = [m for op in program for m in op.receives]
    assert sorted(received, key=repr) == sorted(sent_at, key=repr), "nothing sent is left unread"
    for index, op in enumerate(program):
        assert all(sent_at[m] < index and m.dst == op.stage for m in op.receives)


def test_the_softmax_of_a_chunk_runs_in_the_forward_sweep_one_chunk_behind():
    program = step_program(placement("colocated", 2, 2, 2), time_chunks(4, 6, 2))
    kinds = [(op.kind, op.chunk.index) for op in program]
    first_backward = kinds.index(("B", 4))
    assert all(kinds.index(("L", d)) < first_backward for d in (2, 3, 4))
    assert kinds.index(("L", 2)) > kinds.index(("F", 3)), "chunk 2's loss waits for chunk 3's forward"


@pytest.mark.parametrize("name, layers, shards, stages, chunk_steps, attention", [
    ("chain", 2, 2, 2, 2, "none"),
    ("chain", 4, 4, 8, 3, "none"),
    ("colocated", 2, 2, 2, 1, "none"),
    ("colocated", 4, 4, 2, 4, "none"),
    ("chain", 2, 3, 1, 100, "none"),  # one chunk, one stage
    ("chain", 2, 2, 2, 2, "luong"),  # the top stage attends over the encoder chunks it kept
    ("chain", 4, 4, 8, 3, "luong"),
    ("colocated", 2, 2, 2, 1, "luong"),
    ("colocated", 4, 4, 2, 4, "luong"),
])
def test_chunked_backpropagation_through_time_is_the_full_gradient(name, layers, shards, stages, chunk_steps,
                                                                   attention):
    """float64: the chunks, the carried state and its gradient, the shards' partial log-sum-exps (and the top
    stage's attention over every encoder chunk, its gradient sent back into each) add up to exactly the
    single-device loss and gradient; chunk boundaries fall inside some sentences and past others."""
    model = model_of(layers, shards, attention)
    batch = batch_of([7, 5, 5, 2, 1], [3, 6, 1, 4, 2])
    expected_nll, expected = single_device_gradients(model, batch)
    nll, grads = wavefront_gradients(model, batch, name, stages, chunk_steps)
    assert nll == pytest.approx(expected_nll, rel=1e-12)
    for key in expected:
        assert torch.allclose(grads[key], expected[key], rtol=1e-9, atol=1e-12), key


def test_the_simulator_waits_for_messages_and_for_its_stage():
    model = model_of(2, 2).float()
    costs = operation_costs(model, placement("colocated", 2, 2, 2), batch_of([6, 6, 5], [5, 4, 4]), 2)
    unit = ProgramCosts(costs.program, [1.0] * len(costs.program), costs.message_bytes, 0.0, costs.words)
    free = simulate_program(unit, 2, link_bytes_per_s=float("inf"), link_latency_s=0.0)
    per_stage = [sum(1 for op in unit.program if op.stage == s) for s in range(2)]
    assert max(per_stage) <= free["step_s"] < sum(per_stage), "overlap, but no stage does two things at once"
    slow = simulate_program(unit, 2, link_bytes_per_s=float("inf"), link_latency_s=0.5)
    assert slow["step_s"] > free["step_s"]
