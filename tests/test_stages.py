"""Pipeline units: run in sequence they are the model (exactly, with the softmax folded by shards); placement."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import make_batch, small_model

from dist_s2s.errors import UserError
from dist_s2s.parallel.one_f_one_b import unit_inputs
from dist_s2s.parallel.stages import pipeline_units, stage_boundaries


@pytest.mark.parametrize("layers, shards, attention", [(1, 1, "none"), (2, 3, "none"), (4, 4, "none"),
                                                       (1, 1, "luong"), (2, 3, "luong")])
def test_the_units_run_in_sequence_give_the_models_loss_and_gradients(layers, shards, attention):
    torch.manual_seed(0)
    from dist_s2s.config import ModelConfig
    from dist_s2s.model.seq2seq import Seq2Seq

    model = Seq2Seq(ModelConfig(embedding_dim=8, hidden_size=12, num_layers=layers, softmax_shards=shards,
                                attention=attention), 37, 41)
    batch = make_batch([([5, 6, 7, 8], [9, 10]), ([11, 12], [13, 14, 15, 16, 17]), ([18], [19])])
    hidden, _ = model.decode(batch.tgt_in, model.encode(batch.src, batch.src_lengths))
    real = batch.tgt_out.flatten() != 0  # every position folded, padding's NLL zeroed
    folded_loss = (model.token_nll_by_shards(hidden.flatten(0, 1), batch.tgt_out.flatten()) * real).sum()
    folded = torch.autograd.grad(folded_loss, list(model.parameters()))
    model_loss, _ = model(batch)  # one softmax product instead of the fold: equal up to rounding
    activations = unit_inputs(batch)
    for unit in pipeline_units(model):
        activations = unit(activations)
    loss = activations.sum()
    assert torch.equal(loss, folded_loss)
    assert torch.allclose(loss, model_loss, rtol=1e-6)
    for a, b in zip(torch.autograd.grad(loss, list(model.parameters())), folded):
        assert torch.equal(a, b)


def test_every_float_passed_between_units_is_contiguous_and_needs_a_gradient():
    model = small_model(shards=2).float()
    batch = make_batch([([5, 6, 7], [8, 9]), ([10], [11, 12, 13])])
    activations = unit_inputs(batch)
    for unit in pipeline_units(model)[:-1]:
        activations = unit(activations)
        for tensor in activations:
            assert tensor.is_contiguous()
            assert tensor.requires_grad == tensor.is_floating_point()


@pytest.mark.parametrize("stages, parts", [
    (8, [0, 2, 3, 4, 5, 6, 7, 8, 9]),   # the paper: embeddings + LSTM 0 | LSTM 1 | … | shard 3
    (4, [0, 3, 5, 7, 9]),
    (2, [0, 5, 9]),
    (1, [0, 9]),
    (3, [0, 4, 7, 9]),
])
def test_units_are_dealt_to_stages_in_order_with_the_embeddings_on_the_first(stages, parts):
    assert stage_boundaries(4, 4, stages) == parts


def test_the_units_hold_the_models_own_parameters_which_the_model_names():
    model = small_model(shards=3, attention="luong")
    units = pipeline_units(model)
    names = [name for unit in units for name in model.names_of(unit.parameters())]
    assert sorted(names) == sorted(name for name, _ in model.named_parameters())
    assert model.names_of(units[-1].parameters()) == ["softmax.2.weight", "softmax.2.bias"]


def test_more_stages_than_layers_and_shards_is_an_error_naming_the_keys():
    with pytest.raises(UserError, match=r"parallel.stages=9 exceeds the 4 LSTM layers \+ 4 softmax shards"):
        stage_boundaries(4, 4, 9)


def test_stages_times_replicas_must_equal_the_launched_processes():
    from dist_s2s.config import load_config
    from dist_s2s.parallel.process_group import check_world_size

    config = load_config(None, ["--parallel.stages=4", "--parallel.data=2"])
    check_world_size(config, 8)
    with pytest.raises(UserError, match=r"parallel.stages × parallel.data = 4 × 2 = 8, but 6 processes were launched"):
        check_world_size(config, 6)


def test_a_checkpoint_in_stage_parts_reads_back_as_the_single_device_weights(tmp_path):
    from dist_s2s.parallel.stage_checkpoint import stage_weights
    from dist_s2s.train.checkpoint import load_weights, model_weights, write_part

    model = small_model(shards=2)
    main = tmp_path / "step-00000001.pt"
    parts = [write_part(main, f"stage-{s}", w) for s, w in enumerate(stage_weights(model, 3))]
    assert [p["file"] for p in parts] == [f"step-00000001.stage-{s}.pt" for s in range(3)]
    merged = model_weights(main, {"model_parts": parts})
    assert merged.keys() == model.unsharded_state_dict().keys()
    assert all(torch.equal(merged[k], v) for k, v in model.unsharded_state_dict().items())
    load_weights(small_model(shards=3), main, merged)  # another shard count

    with pytest.raises(UserError, match=r"step-00000001.stage-1.pt holds .*already held by an earlier part"):
        model_weights(main, {"model_parts": [parts[0], parts[1], parts[1]]})
    without_first = model_weights(main, {"model_parts": parts[1:]})
    missing = r"checkpoint .*step-00000001.pt has no \S+ \(\d+ tensors missing: a stage part"
    with pytest.raises(UserError, match=missing):
        load_weights(small_model(shards=2), main, without_first)
    with pytest.raises(UserError, match=r"checkpoint .*step-00000001.pt has no softmax.0.weight: a stage part is lost"):
        model_weights(main, {"model_parts": parts[:1] + parts[2:]})


def test_a_dead_nccl_peer_raises_in_python_unless_the_user_chose_otherwise(monkeypatch):
    from dist_s2s.parallel.process_group import nccl_errors_raise

    monkeypatch.delenv("TORCH_NCCL_ASYNC_ERROR_HANDLING", raising=False)
    nccl_errors_raise()
    assert os.environ["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "2"
    monkeypatch.setenv("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    nccl_errors_raise()
    assert os.environ["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1"
