"""The paper's model: sharded softmax = one softmax, padding changes nothing, paper sizes."""

from __future__ import annotations

import pytest
import torch
from conftest import make_batch, small_model
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from dist_s2s.config import ModelConfig
from dist_s2s.data.vocab import PAD_ID
from dist_s2s.model import softmax
from dist_s2s.model.layers import LSTMLayer
from dist_s2s.model.seq2seq import Seq2Seq
from dist_s2s.model.softmax import SoftmaxShard, shard_bounds, shard_partial


@pytest.mark.parametrize("shards", [1, 2, 4])
@pytest.mark.parametrize("vocab", [80, 103])
def test_sharded_softmax_loss_and_gradients_equal_one_full_softmax(shards, vocab):
    torch.manual_seed(shards)
    hidden = torch.randn(50, 16, dtype=torch.float64, requires_grad=True) * 3
    targets = torch.randint(0, vocab, (50,))
    full_weight = torch.randn(vocab, 16, dtype=torch.float64, requires_grad=True)
    full_bias = torch.randn(vocab, dtype=torch.float64, requires_grad=True)
    expected = torch.nn.functional.cross_entropy(hidden @ full_weight.T + full_bias, targets, reduction="none")
    state = None
    pieces = []
    for start, size in shard_bounds(vocab, shards):
        shard = SoftmaxShard(16, start, size).double()
        with torch.no_grad():
            shard.weight.copy_(full_weight[start:start + size])
            shard.bias.copy_(full_bias[start:start + size])
        pieces.append(shard)
        state = shard(hidden, targets, state)
    assert torch.allclose(state.nll(), expected, rtol=1e-6, atol=0)
    grad_sharded = torch.autograd.grad(state.nll().sum(), [hidden, *[p.weight for p in pieces]])
    grad_full = torch.autograd.grad(expected.sum(), [hidden, full_weight])
    assert torch.allclose(grad_sharded[0], grad_full[0], rtol=1e-6, atol=1e-12)
    assert torch.allclose(torch.cat(grad_sharded[1:]), grad_full[1], rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("block_elements", [2**18, 16])  # one block of rows, or blocks of 8 rows
def test_a_partials_hand_written_backward_is_autograds_over_the_log_softmax(monkeypatch, block_elements):
    """Every gradient a partial can receive (max, Σ exp, target logit; the max's is what the merge of
    several partials sends), in float64, with the target inside and outside the slice."""
    monkeypatch.setattr(softmax, "CACHE_BLOCK_ELEMENTS", block_elements)
    torch.manual_seed(0)
    logits = (torch.randn(50, 30, dtype=torch.float64) * 3).requires_grad_()
    local = torch.randint(-10, 40, (50,))  # a third of the targets belong to other slices
    weights = torch.randn(3, 50, dtype=torch.float64)
    partial = shard_partial(logits, local)
    mine = (local >= 0) & (local < 30)
    reference = (logits.max(dim=1).values, torch.exp(logits - logits.max(dim=1, keepdim=True).values).sum(dim=1),
                 torch.where(mine, logits.gather(1, local.clamp(0, 29)[:, None]).squeeze(1), 0.0))
    for ours, theirs in zip(partial, reference):
        assert torch.allclose(ours, theirs, rtol=1e-12)
    ours = torch.autograd.grad(sum((w * p).sum() for w, p in zip(weights, partial)), logits)[0]
    theirs = torch.autograd.grad(sum((w * p).sum() for w, p in zip(weights, reference)), logits)[0]
    assert torch.allclose(ours, theirs, rtol=1e-10, atol=1e-12)


def test_under_bf16_a_partial_takes_bf16_logits_and_is_fp32():
    logits = torch.randn(20, 64).bfloat16().requires_grad_()
    partial = shard_partial(logits, torch.randint(0, 64, (20,)))
    assert all(t.dtype == torch.float32 for t in partial)
    reference = torch.nn.functional.cross_entropy(logits.float(), torch.arange(20) * 0, reduction="none")
    assert partial.nll().shape == reference.shape
    partial.nll().sum().backward()
    assert logits.grad.dtype == torch.bfloat16


def test_shards_of_a_vocabulary_that_does_not_divide():
    assert shard_bounds(10, 4) == [(0, 3), (3, 3), (6, 2), (8, 2)]
    assert sum(size for _, size in shard_bounds(80_000, 4)) == 80_000


@pytest.mark.parametrize("shards", [1, 3])
def test_model_loss_is_independent_of_the_number_of_softmax_shards(shards):
    batch = make_batch([([5, 6, 7], [8, 9]), ([10, 11], [12, 13, 14])])
    reference, sharded = small_model(shards=1), small_model(shards=shards)
    sharded.load_state_dict({**{k: v for k, v in reference.state_dict().items() if not k.startswith("softmax")},
                             **_split_softmax(reference, sharded)})
    assert torch.allclose(reference(batch)[0], sharded(batch)[0], rtol=1e-10)


def _split_softmax(reference: Seq2Seq, target: Seq2Seq) -> dict[str, torch.Tensor]:
    weight, bias = reference.softmax[0].weight.data, reference.softmax[0].bias.data
    return {f"softmax.{i}.{name}": tensor[shard.start:shard.start + shard.size]
            for i, shard in enumerate(target.softmax) for name, tensor in (("weight", weight), ("bias", bias))}


@pytest.mark.parametrize("attention", ["none", "luong"])
def test_padding_changes_neither_loss_nor_gradients(attention):
    model = small_model(attention=attention)
    sentences = [([5, 6, 7, 8, 9], [10, 11]), ([12, 13], [14, 15, 16, 17, 18]), ([19], [20])]
    loss, words = model(make_batch(sentences))
    batched = torch.autograd.grad(loss, list(model.parameters()))
    single_loss, single_words = 0, 0
    single = [torch.zeros_like(p) for p in model.parameters()]
    for sentence in sentences:
        one_loss, one_words = model(make_batch([sentence]))
        for total, grad in zip(single, torch.autograd.grad(one_loss, list(model.parameters()))):
            total += grad
        single_loss, single_words = single_loss + one_loss, single_words + one_words
    assert words == single_words == 2 + 5 + 1 + 3
    assert torch.allclose(loss, single_loss, rtol=1e-12)
    for a, b in zip(batched, single):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-14)


def test_the_encoder_final_state_ignores_padding():
    model = small_model()
    padded = model.encode(torch.tensor([[5, 6, 7, PAD_ID, PAD_ID]]), torch.tensor([3]))
    exact = model.encode(torch.tensor([[5, 6, 7]]), torch.tensor([3]))
    for (h1, c1), (h2, c2) in zip(padded.layers, exact.layers):
        assert torch.equal(h1, h2) and torch.equal(c1, c2)


def test_every_parameter_starts_uniform_in_the_init_range():
    model = small_model()
    values = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert values.abs().max() <= 0.08 and values.abs().max() > 0.07


def test_the_paper_model_has_384m_parameters():
    with torch.device("meta"):
        model = Seq2Seq(ModelConfig(), 160_000, 80_000)
    count = sum(p.numel() for p in model.parameters())
    assert 384e6 <= count < 385e6, count
    assert [shard.weight.shape for shard in model.softmax] == [(20_000, 1000)] * 4


@pytest.mark.parametrize("shards", [1, 3])
def test_the_one_product_softmax_equals_the_shard_by_shard_fold_the_pipeline_uses(shards):
    model = small_model(shards=shards).double()
    hidden = torch.randn(9, 12, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 41, (9,))
    fused, folded = model.token_nll(hidden, targets), model.token_nll_by_shards(hidden, targets)
    assert torch.allclose(fused, folded, rtol=1e-10)
    parameters = [hidden, *[p for shard in model.softmax for p in (shard.weight, shard.bias)]]
    for a, b in zip(torch.autograd.grad(fused.sum(), parameters), torch.autograd.grad(folded.sum(), parameters)):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_an_encoder_layer_equals_one_packed_lstm_run_in_outputs_final_states_and_gradients(dtype, tolerance):
    """The layer runs the steps all sentences share padded and the rest packed; the numbers must be
    those of packing the whole batch (float32 takes oneDNN's kernel for the shared steps)."""
    torch.manual_seed(0)
    layer = LSTMLayer(6, 7).to(dtype)
    inputs = torch.randn(4, 6, 6, dtype=dtype, requires_grad=True)
    lengths = torch.tensor([4, 6, 3, 4])
    state = (torch.randn(1, 4, 7, dtype=dtype), torch.randn(1, 4, 7, dtype=dtype))
    outputs, (h, c) = layer(inputs, lengths, state)
    packed = pack_padded_sequence(inputs, lengths, batch_first=True, enforce_sorted=False)
    expected, (expected_h, expected_c) = layer.lstm(packed, state)
    expected, _ = pad_packed_sequence(expected, batch_first=True, total_length=6)
    assert outputs.shape == expected.shape and torch.equal(outputs[2, 3:], torch.zeros(3, 7, dtype=dtype))
    for ours, theirs in [(outputs, expected), (h, expected_h), (c, expected_c)]:
        assert torch.allclose(ours, theirs, rtol=tolerance, atol=tolerance)
    weights = torch.randn_like(outputs)
    wrt = [inputs, *layer.parameters()]
    ours = torch.autograd.grad((outputs * weights).sum() + h.sum() + 2 * c.sum(), wrt)
    theirs = torch.autograd.grad((expected * weights).sum() + expected_h.sum() + 2 * expected_c.sum(), wrt)
    for a, b in zip(ours, theirs):
        assert torch.allclose(a, b, rtol=tolerance, atol=tolerance)


def test_a_batch_of_equal_lengths_never_packs():
    layer = LSTMLayer(3, 4)
    inputs = torch.randn(2, 5, 3)
    outputs, (h, c) = layer(inputs, torch.tensor([5, 5]))
    expected, (expected_h, expected_c) = layer.lstm(inputs)
    assert torch.equal(outputs, expected) and torch.equal(h, expected_h) and torch.equal(c, expected_c)


@pytest.mark.parametrize("layers, attention", [(1, "none"), (3, "none"), (2, "luong")])
def test_each_side_as_one_multi_layer_lstm_call_is_the_same_model(layers, attention):
    """`stack_layers` (the CUDA default): one kernel call a side on the layers' own weights gives the
    per-layer model's loss, final states and every gradient (float64; unequal lengths: the packed tail)."""
    torch.manual_seed(0)
    config = ModelConfig(embedding_dim=8, hidden_size=12, num_layers=layers, softmax_shards=2, attention=attention)
    model = Seq2Seq(config, 37, 41).double()
    batch = make_batch([([5, 6, 7, 8, 9], [4, 5]), ([7, 8], [6, 7, 8, 9]), ([9], [5])])
    results = []
    for stack in (False, True):
        model.stack_layers = stack
        model.zero_grad(set_to_none=True)
        nll, _ = model(batch)
        nll.backward()
        states = model.encode(batch.src, batch.src_lengths)
        results.append((nll.detach(), [t.detach() for s in states.layers for t in s],
                        {n: p.grad.clone() for n, p in model.named_parameters()}))
    (nll, states, grads), (stacked_nll, stacked_states, stacked_grads) = results
    assert torch.allclose(nll, stacked_nll, rtol=1e-12)
    assert all(torch.allclose(a, b, rtol=1e-10, atol=1e-12) for a, b in zip(states, stacked_states))
    assert all(torch.allclose(grads[k], stacked_grads[k], rtol=1e-9, atol=1e-12) for k in grads)


def test_the_plain_baseline_drops_out_in_training_only_at_the_models_rate():
    """The plain PyTorch baseline (`bench/plain.py`) takes `model.dropout` the obvious way: nn.Dropout on the
    embeddings and the softmax input, nn.LSTM's own between layers; evaluation drops nothing."""
    from dist_s2s.bench.plain import PlainSeq2Seq

    config = ModelConfig(embedding_dim=8, hidden_size=12, num_layers=2, softmax_shards=1, dropout=0.5)
    torch.manual_seed(0)
    dropped = PlainSeq2Seq(config, 37, 41)
    torch.manual_seed(0)
    plain = PlainSeq2Seq(ModelConfig(embedding_dim=8, hidden_size=12, num_layers=2, softmax_shards=1), 37, 41)
    assert dropped.encoder.dropout == dropped.decoder.dropout == 0.5 and plain.encoder.dropout == 0
    batch = make_batch([([5, 6, 7, 8], [4, 5, 6]), ([7, 8], [6, 7])])
    dropped.eval()
    assert dropped(batch)[0].item() == plain(batch)[0].item()
    dropped.train()
    assert dropped(batch)[0].item() != plain(batch)[0].item()
