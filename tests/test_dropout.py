"""Dropout (`model.dropout`): its masks are a function of where a value is, so every way of running a step
(time chunks, micro-batches, stages) drops exactly what one device drops. The multi-process runs and the
resume test are in test_pipeline.py and test_trainer.py."""

from __future__ import annotations

import pytest
import torch
from conftest import batch_of, model_of, wavefront_gradients

from dist_s2s.config import ModelConfig
from dist_s2s.model.dropout import Dropout, input_site, row_keys, step_dropout
from dist_s2s.model.seq2seq import Seq2Seq
from dist_s2s.parallel.one_f_one_b import unit_inputs
from dist_s2s.parallel.stages import pipeline_units

RATE = 0.3


def lines(rows: int, first: int = 1) -> torch.Tensor:
    return torch.tensor([[0, first + row] for row in range(rows)])


def masks(dropout: Dropout, shape: tuple[int, int, int], site: int = 0, start: int = 0) -> torch.Tensor:
    return dropout(torch.ones(shape, dtype=torch.float64), site, start) != 0


def test_about_rate_of_the_values_are_dropped_and_the_rest_scaled_to_keep_the_expectation():
    dropout = Dropout(RATE, row_keys(lines(64), seed=1, step=1))
    values = torch.ones(64, 30, 200, dtype=torch.float64)
    dropped = dropout(values, site=0)
    assert (dropped == 0).double().mean().item() == pytest.approx(RATE, abs=0.005)
    assert dropped.mean().item() == pytest.approx(1.0, abs=0.01)
    assert dropped.unique().tolist() == [0.0, pytest.approx(1 / (1 - RATE))]


def test_a_time_chunk_draws_its_slice_of_the_whole_sentences_mask():
    dropout = Dropout(RATE, row_keys(lines(5), seed=0, step=3))
    whole = masks(dropout, (5, 11, 16), site=2)
    chunks = [masks(dropout, (5, stop - start, 16), site=2, start=start) for start, stop in ((0, 4), (4, 8), (8, 11))]
    assert torch.equal(torch.cat(chunks, dim=1), whole)


def test_a_sentence_gets_its_mask_whatever_row_or_batch_it_is_in():
    keys = row_keys(lines(6), seed=0, step=3)
    whole = masks(Dropout(RATE, keys), (6, 9, 16))
    order = torch.tensor([4, 1, 3])
    assert torch.equal(masks(Dropout(RATE, keys[order]), (3, 9, 16)), whole[order])
    assert torch.equal(masks(Dropout(RATE, keys[order]), (3, 5, 16)), whole[order, :5]), "trimmed to its longest"


def test_masks_differ_between_steps_sites_sentences_positions_and_seeds():
    shape = (4, 6, 64)
    reference = masks(Dropout(RATE, row_keys(lines(4), seed=0, step=1)), shape)
    others = [masks(Dropout(RATE, row_keys(lines(4), seed=0, step=2)), shape),
              masks(Dropout(RATE, row_keys(lines(4), seed=1, step=1)), shape),
              masks(Dropout(RATE, row_keys(lines(4, first=5), seed=0, step=1)), shape),
              masks(Dropout(RATE, row_keys(lines(4), seed=0, step=1)), shape, site=1)]
    for other in others:
        assert 0.3 < (other != reference).double().mean().item() < 0.5  # independent masks: 2p(1-p) = 0.42
    positions = masks(Dropout(RATE, row_keys(lines(4), seed=0, step=1)), (4, 40, 64))
    assert not torch.equal(positions[:, 0], positions[:, 1]) and not torch.equal(positions[0], positions[1])


def test_the_sites_are_every_layers_input_and_the_softmaxs_and_all_distinct():
    sites = [input_site(side, layer) for side in ("encoder", "decoder") for layer in range(4)]
    assert len(set(sites + [input_site("decoder", 4)])) == 9


def test_no_dropout_rate_is_no_dropout_at_all():
    assert step_dropout(0.0, lines(3), seed=0, step=1, device=torch.device("cpu")) is None


def test_dropout_changes_the_training_loss_and_nothing_else_uses_it():
    model = model_of(2, 2)
    batch = batch_of([5, 4, 2], [3, 5, 2])
    batch.lines = lines(3)
    dropout = step_dropout(RATE, batch.lines, seed=0, step=1, device=torch.device("cpu"))
    plain, _ = model(batch)
    assert float(model(batch, dropout)[0].detach()) != pytest.approx(float(plain.detach()))
    assert torch.equal(model(batch)[0], plain), "without the step's dropout the model is deterministic"


@pytest.mark.parametrize("name, layers, shards, stages, chunk_steps, attention", [
    ("chain", 2, 2, 4, 2, "none"),
    ("colocated", 2, 2, 2, 3, "none"),
    ("chain", 3, 2, 5, 1, "none"),
    ("colocated", 2, 2, 2, 3, "luong"),  # the softmax's site is after the attention
])
def test_the_wavefront_with_dropout_gives_the_single_device_loss_and_gradients(name, layers, shards, stages,
                                                                              chunk_steps, attention):
    """float64, every stage in one process: chunks drop out what the whole batch drops out on one device."""
    model = model_of(layers, shards, attention)
    batch = batch_of([7, 5, 5, 2, 1], [3, 6, 1, 4, 2])
    batch.lines = lines(5)
    dropout = step_dropout(RATE, batch.lines, seed=4, step=9, device=torch.device("cpu"))
    model.zero_grad(set_to_none=True)
    nll, _ = model(batch, dropout)
    (nll / batch.step_sentences).backward()
    expected = {key: p.grad.clone() for key, p in model.named_parameters()}
    wavefront_nll, grads = wavefront_gradients(model, batch, name, stages, chunk_steps, dropout=dropout)
    assert wavefront_nll == pytest.approx(nll.item(), rel=1e-12)
    plain_nll, _ = wavefront_gradients(model, batch, name, stages, chunk_steps)
    assert plain_nll != pytest.approx(nll.item()), "dropout was applied"
    for key in expected:
        assert torch.allclose(grads[key], expected[key], rtol=1e-9, atol=1e-12), key


@pytest.mark.parametrize("micro_batches, attention", [(1, "none"), (2, "none"), (3, "none"), (2, "luong")])
def test_the_1f1b_units_with_dropout_give_the_single_device_loss_and_gradients(micro_batches, attention):
    """Micro-batches (interleaved rows, each trimmed to its longest) drop what the whole batch drops."""
    torch.manual_seed(0)
    model = Seq2Seq(ModelConfig(embedding_dim=8, hidden_size=12, num_layers=2, softmax_shards=2,
                                dropout=RATE, attention=attention), 40, 40).double()
    batch = batch_of([7, 5, 5, 2, 1, 3], [3, 6, 1, 4, 2, 5])
    batch.lines = lines(6)
    nll, _ = model(batch, step_dropout(RATE, batch.lines, seed=2, step=5, device=torch.device("cpu")))
    expected = torch.autograd.grad(nll, list(model.parameters()))
    units = pipeline_units(model)
    total = 0
    for part in batch.split(micro_batches):
        activations = unit_inputs(part, seed=2, step=5)
        for unit in units:
            activations = unit(activations)
        total = total + activations.sum()
    assert total.item() == pytest.approx(nll.item(), rel=1e-12)
    for a, b in zip(torch.autograd.grad(total, list(model.parameters())), expected):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)


def test_pipeline_units_drop_nothing_in_evaluation():
    torch.manual_seed(0)
    model = Seq2Seq(ModelConfig(embedding_dim=8, hidden_size=12, num_layers=2, softmax_shards=1,
                                dropout=RATE), 40, 40).double()
    batch = batch_of([4, 2], [3, 2])
    batch.lines = lines(2)
    activations = unit_inputs(batch, step=1)
    for unit in pipeline_units(model):
        activations = unit.eval()(activations)  # DeepSpeed's engine.eval() reaches every unit
    assert activations.sum().item() == pytest.approx(model(batch)[0].item(), rel=1e-12)
