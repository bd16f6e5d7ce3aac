"""The baseline every figure is compared with: the same model written the obvious PyTorch way.

nn.Embedding, one multi-layer nn.LSTM per side, one nn.Linear over the whole vocabulary and
cross-entropy; same sizes, same init range, same loss (summed NLL / sentences) and clipping. With
`model.dropout`, the obvious PyTorch dropout at the same places (Zaremba et al.): nn.Dropout on the
embeddings and on the softmax's input, the LSTM's own `dropout` between its layers; its masks come from
torch's generator, not from our position-keyed ones, so it drops as much but not the same values.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from dist_s2s.config import ModelConfig
from dist_s2s.data.batch import Batch
from dist_s2s.data.vocab import PAD_ID


class PlainSeq2Seq(nn.Module):
    def __init__(self, config: ModelConfig, src_vocab: int, tgt_vocab: int):
        super().__init__()
        self.src_embed = nn.Embedding(src_vocab, config.embedding_dim)
        self.tgt_embed = nn.Embedding(tgt_vocab, config.embedding_dim)
        self.encoder = nn.LSTM(config.embedding_dim, config.hidden_size, config.num_layers, batch_first=True)
        self.decoder = nn.LSTM(config.embedding_dim, config.hidden_size, config.num_layers, batch_first=True)
        self.output = nn.Linear(config.hidden_size, tgt_vocab)
        self.drop = nn.Dropout(config.dropout)
        if config.dropout:  # between the layers: nn.LSTM's own
            self.encoder.dropout = self.decoder.dropout = config.dropout
        for parameter in self.parameters():
            nn.init.uniform_(parameter, -config.init_range, config.init_range)

    def forward(self, batch: Batch, dropout=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed NLL of the batch's target words and their count, like `Seq2Seq.forward`. `dropout` (the
        trainer's position-keyed masks) only says that this is a training step; nn.Dropout draws its own."""
        packed = pack_padded_sequence(self.drop(self.src_embed(batch.src)), batch.src_lengths.cpu(), batch_first=True,
                                      enforce_sorted=False)
        _, state = self.encoder(packed)
        hidden, _ = self.decoder(self.drop(self.tgt_embed(batch.tgt_in)), state)
        logits = self.output(self.drop(hidden))
        nll = nn.functional.cross_entropy(logits.flatten(0, 1), batch.tgt_out.flatten(), ignore_index=PAD_ID,
                                          reduction="sum")
        return nll, (batch.tgt_out != PAD_ID).sum()
