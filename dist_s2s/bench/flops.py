"""Useful floating-point operations of a training step, for FLOP/s and MFU.

Counted as the model needs them, on real words only (padding is waste, not work): an LSTM
layer's gate product is 2 · 4H · (I + H) FLOPs a word, the softmax 2 · H · V a target
position; embeddings, nonlinearities and the optimizer are left out (under 1% here). A
training step is forward + backward = 3 × forward (backward computes the products for both
inputs and weights).
"""

from __future__ import annotations

from dist_s2s.config import ModelConfig
from dist_s2s.data.batch import Batch


def lstm_layer_flops(input_size: int, hidden_size: int) -> int:
    return 2 * 4 * hidden_size * (input_size + hidden_size)


def forward_flops(model: ModelConfig, tgt_vocab: int, src_words: int, tgt_positions: int) -> int:
    """One forward pass over `src_words` encoder inputs and `tgt_positions` decoder positions."""
    layers = sum(lstm_layer_flops(model.embedding_dim if k == 0 else model.hidden_size, model.hidden_size)
                 for k in range(model.num_layers))
    return layers * (src_words + tgt_positions) + 2 * model.hidden_size * tgt_vocab * tgt_positions


def training_flops(model: ModelConfig, tgt_vocab: int, batch: Batch) -> int:
    """Forward + backward of one batch: source words, and target words + </s> as decoder positions."""
    return 3 * forward_flops(model, tgt_vocab, int(batch.src_lengths.sum()), int(batch.tgt_lengths.sum()))
