"""Global attention (Luong et al. 2015, the general score, no input feeding) on the top decoder layer."""

from __future__ import annotations

import torch
from conftest import make_batch, small_model

from dist_s2s.config import ModelConfig
from dist_s2s.model.attention import GlobalAttention
from dist_s2s.model.seq2seq import Seq2Seq, source_mask


def test_each_target_position_spreads_its_attention_over_its_sentences_real_source_positions_only():
    model = small_model(attention="luong")
    batch = make_batch([([5, 6, 7, 8, 9], [10, 11]), ([12, 13], [14, 15, 16]), ([19], [20])])
    weights = model.attention_weights(batch.src, batch.src_lengths, batch.tgt_in)
    assert weights.shape == (3, batch.tgt_in.shape[1], batch.src.shape[1])
    assert torch.allclose(weights.sum(-1), torch.ones(3, batch.tgt_in.shape[1], dtype=weights.dtype))
    for row, length in enumerate(batch.src_lengths.tolist()):
        assert torch.all(weights[row, :, length:] == 0) and torch.all(weights[row, :, :length] > 0)


def test_the_attention_layer_is_luongs_general_score_and_its_gradients_are_autograds():
    torch.manual_seed(0)
    attention = GlobalAttention(5).double()
    hidden, memory = torch.randn(2, 3, 5, dtype=torch.float64), torch.randn(2, 4, 5, dtype=torch.float64)
    mask = source_mask(torch.tensor([4, 2]), 4, torch.device("cpu"))
    attended, weights = attention(hidden, memory, mask)
    w_a, w_c = attention.score.weight, attention.combine.weight
    for b in range(2):
        for t in range(3):
            scores = torch.stack([hidden[b, t] @ w_a @ memory[b, s] for s in range(4)])
            expected = torch.softmax(scores.masked_fill(~mask[b], float("-inf")), dim=0)
            context = expected @ memory[b]
            assert torch.allclose(weights[b, t], expected)
            assert torch.allclose(attended[b, t], torch.tanh(w_c @ torch.cat([context, hidden[b, t]])))
    inputs = (hidden.requires_grad_(), memory.requires_grad_())
    assert torch.autograd.gradcheck(lambda h, m: attention(h, m, mask)[0], inputs)


def test_a_model_with_attention_learns_a_copy_task_that_one_without_does_not_in_the_same_steps():
    """Copying 7 random words: attention reads each source word when it is needed; one vector must hold all."""
    torch.manual_seed(0)
    batch = make_batch([(words, words) for words in torch.randint(4, 20, (64, 7)).tolist()])
    losses = {}
    for attention in ("none", "luong"):
        torch.manual_seed(0)
        config = ModelConfig(embedding_dim=16, hidden_size=32, num_layers=1, softmax_shards=1, attention=attention)
        model = Seq2Seq(config, 20, 20)
        optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
        for _ in range(200):
            optimizer.zero_grad()
            nll, words = model(batch)
            (nll / words).backward()
            optimizer.step()
        losses[attention] = (nll / words).item()
    assert losses["luong"] < 0.4 * losses["none"], losses
