"""Sutskever, Vinyals & Le (2014): a deep LSTM reads the (reversed) source, another writes the target.

Decoder layer k starts from the final (h, c) of encoder layer k (§3.2: "the LSTM's final
hidden state ... initialises" the decoder); the output is a plain softmax over the target
vocabulary, computed in vocabulary shards (§3.5). Optional dropout on each layer's input and the
softmax's (`model.dropout`, `dropout.py`), as Zaremba et al. (2014) later trained this model, and
optional global attention on the top layer (`model.attention`, `attention.py`; Luong et al. 2015),
without input feeding.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from dist_s2s.config import ModelConfig
from dist_s2s.data.batch import Batch
from dist_s2s.data.vocab import PAD_ID
from dist_s2s.device import to_device
from dist_s2s.model.attention import GlobalAttention
from dist_s2s.model.dropout import Dropout, input_site
from dist_s2s.model.layers import LSTMLayer, fused, over_lengths, share_stack_buffer
from dist_s2s.model.softmax import SoftmaxShard, masked_nll, merge_all, shard_bounds, shard_partial


class Seq2Seq(nn.Module):
    def __init__(self, config: ModelConfig, src_vocab_size: int, tgt_vocab_size: int):
        super().__init__()
        self.config = config
        self.src_vocab_size, self.tgt_vocab_size = src_vocab_size, tgt_vocab_size
        size, width = config.hidden_size, config.embedding_dim
        self.src_embed = nn.Embedding(src_vocab_size, width)
        self.tgt_embed = nn.Embedding(tgt_vocab_size, width)
        self.encoder = nn.ModuleList([LSTMLayer(width if k == 0 else size, size) for k in range(config.num_layers)])
        self.decoder = nn.ModuleList([LSTMLayer(width if k == 0 else size, size) for k in range(config.num_layers)])
        self.softmax = nn.ModuleList([SoftmaxShard(size, start, count)
                                      for start, count in shard_bounds(tgt_vocab_size, config.softmax_shards)])
        self.attention = GlobalAttention(size) if config.attention == "luong" else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Every parameter uniform in [-init_range, init_range] (§3.4: [-0.08, 0.08])."""
        for parameter in self.parameters():
            nn.init.uniform_(parameter, -self.config.init_range, self.config.init_range)

    stack_layers: bool | None = None
    """Run each side's layers as one multi-layer LSTM call: None (auto) does on CUDA without dropout, where
    cuDNN overlaps the layers of a stack (a stack cannot drop out between its layers with our masks); on
    CPU oneDNN runs a stack layer by layer, so separate calls cost the same. Same weights, same checkpoint,
    same results (tests)."""

    def _stacked(self, inputs: torch.Tensor, dropout: Dropout | None) -> bool:
        if dropout is not None:
            return False
        return self._stacks_on(inputs.device) if self.stack_layers is None else self.stack_layers

    def _stacks_on(self, device: torch.device) -> bool:
        """Whether a side runs as one stack by default: on CUDA, for a model trained without dropout (the same
        calls in training and evaluation, so one weight layout serves both)."""
        return device.type == "cuda" and self.config.dropout == 0

    def _apply(self, fn, recurse=True):
        """After a move (`.to`, `.cuda`, `.double`), each `nn.LSTM` has flattened its own weights; a side that
        runs as one stack gets its layers' weights in one cuDNN buffer instead, so its call copies nothing."""
        super()._apply(fn, recurse)
        device = self.src_embed.weight.device
        if self.stack_layers is not False and self._stacks_on(device):
            share_stack_buffer(list(self.encoder))
            share_stack_buffer(list(self.decoder))
        return self

    def encode(self, src: torch.Tensor, src_lengths: torch.Tensor, dropout: Dropout | None = None) -> DecoderState:
        """The decoder's initial state: each encoder layer's final (h, c), and with attention the top encoder
        layer's outputs and which of them are real."""
        hidden, states = self.src_embed(src), []
        if self._stacked(hidden, dropout):
            hidden, (h, c) = over_lengths(fused(list(self.encoder)), hidden, src_lengths, None)
            states = [(h[k:k + 1], c[k:k + 1]) for k in range(len(self.encoder))]
        else:
            for k, layer in enumerate(self.encoder):
                hidden, state = run_layer(layer, hidden, side="encoder", index=k, lengths=src_lengths,
                                          dropout=dropout)
                states.append(state)
        if self.attention is None:
            return DecoderState(states)
        return DecoderState(states, memory=hidden, mask=source_mask(src_lengths, hidden.shape[1], hidden.device))

    def decode(self, tgt_in: torch.Tensor, state: DecoderState, dropout: Dropout | None = None
               ) -> tuple[torch.Tensor, DecoderState]:
        """What the softmax reads [B, T, H] (the top decoder layer's outputs, attended with attention, its
        input dropout applied) and the state after the last step."""
        hidden = self.tgt_embed(tgt_in)
        if self._stacked(hidden, dropout):
            initial = (torch.cat([h for h, _ in state.layers]), torch.cat([c for _, c in state.layers]))
            hidden, (h, c) = fused(list(self.decoder))(hidden, initial)
            finals = [(h[k:k + 1], c[k:k + 1]) for k in range(len(self.decoder))]
        else:
            finals = []
            for k, (layer, layer_state) in enumerate(zip(self.decoder, state.layers)):
                hidden, final = run_layer(layer, hidden, side="decoder", index=k, state=layer_state, dropout=dropout)
                finals.append(final)
        if self.attention is not None:
            hidden = attend(self.attention, hidden, state.memory, state.mask)
        return softmax_input(hidden, layers=len(self.decoder), dropout=dropout), state.advanced(finals)

    def attention_weights(self, src: torch.Tensor, src_lengths: torch.Tensor, tgt_in: torch.Tensor
                          ) -> torch.Tensor:
        """[B, T, S]: where each target position looked (teacher-forced on `tgt_in`), for the pictures of
        `evaluate/attention.py`; source positions in the model's (reversed, where so prepared) order."""
        if self.attention is None:
            raise ValueError("a model without attention has no attention weights")
        state, hidden = self.encode(src, src_lengths), self.tgt_embed(tgt_in)
        for k, (layer, layer_state) in enumerate(zip(self.decoder, state.layers)):
            hidden, _ = run_layer(layer, hidden, side="decoder", index=k, state=layer_state)
        return self.attention(hidden, state.memory, state.mask)[1]

    def token_nll(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """-log p(target) for each row of hidden [N, H], 0 where the target is padding.

        All shards are here, so one [N, H] × [H, V] product and one partial over the whole vocabulary do it;
        a pipeline, where no stage holds every shard, merges the shards' partials (`token_nll_by_shards`).
        """
        weight = torch.cat([shard.weight for shard in self.softmax])
        bias = torch.cat([shard.bias for shard in self.softmax])
        return masked_nll(shard_partial(nn.functional.linear(hidden, weight, bias), targets), targets)

    def token_nll_by_shards(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The same, one partial a softmax shard, merged as pipeline stages merge them."""
        return masked_nll(merge_all([shard(hidden, targets) for shard in self.softmax]), targets)

    def log_probs(self, hidden: torch.Tensor) -> torch.Tensor:
        """Full log-distribution over the target vocabulary [N, V] (decoding, not training)."""
        return torch.log_softmax(torch.cat([shard.logits(hidden) for shard in self.softmax], dim=-1), dim=-1)

    def forward(self, batch: Batch, dropout: Dropout | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed negative log-likelihood of the batch's target words, and how many there are; `dropout`
        (a training step's, `dropout.step_dropout`) or none.

        Every position goes through the softmax and padding's NLL is zeroed, instead of selecting the
        real positions by a boolean mask (whose size the host would have to wait for); a bucketed batch
        pads few positions (docs/data.md)."""
        hidden, _ = self.decode(batch.tgt_in, self.encode(batch.src, batch.src_lengths, dropout), dropout)
        nll = self.token_nll(hidden.flatten(0, 1), batch.tgt_out.flatten())
        return nll.sum(), (batch.tgt_out != PAD_ID).sum()

    def names_of(self, parameters: Iterable[nn.Parameter]) -> list[str]:
        """This model's names of some of its own parameter objects (a pipeline stage's, an optimizer's):
        checkpoints keep weights and optimizer state under these names."""
        names = {id(p): name for name, p in self.named_parameters()}
        return [names[id(p)] for p in parameters]

    def unsharded_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights with the softmax as one `softmax.weight` [V, H] and `softmax.bias` [V]:
        the checkpoint format, the same whatever the number of shards or pipeline stages."""
        return merge_softmax_shards({k: v.detach().clone() for k, v in self.state_dict().items()})

    def load_unsharded_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Inverse of `unsharded_state_dict`."""
        self.load_state_dict(self.shard_softmax(state))

    def shard_softmax(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Tensors under unsharded names (weights, or anything kept per parameter) under this model's names:
        `softmax.weight` and `softmax.bias` cut into its shards."""
        state = dict(state)
        weight, bias = state.pop("softmax.weight"), state.pop("softmax.bias")
        for index, shard in enumerate(self.softmax):
            state[f"softmax.{index}.weight"] = weight[shard.start:shard.start + shard.size]
            state[f"softmax.{index}.bias"] = bias[shard.start:shard.start + shard.size]
        return state


def run_layer(layer: LSTMLayer, inputs: torch.Tensor, *, side: str, index: int, lengths: torch.Tensor | None = None,
              state: tuple[torch.Tensor, torch.Tensor] | None = None, dropout: Dropout | None = None,
              start: int = 0) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Layer `index` of `side` over time steps [start, start + T) of its sentences: its input dropped out at its
    site (layer 0's input is the embeddings' output), then the LSTM from `state` (None: zeros), each
    sentence to its `lengths` (host; the encoder's). One device, the 1F1B units and the wavefront's chunks
    all run a layer through this."""
    if dropout is not None:
        inputs = dropout(inputs, input_site(side, index), start)
    return layer(inputs, lengths, state)


def attend(attention: GlobalAttention, hidden: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The top decoder layer's outputs attended over the top encoder layer's (Luong's h̃)."""
    return attention(hidden, memory, mask)[0]


def source_mask(src_lengths: torch.Tensor, width: int, device: torch.device) -> torch.Tensor:
    """[B, width] True at each sentence's real source positions, built on the host from the host lengths and
    moved without blocking."""
    return to_device(torch.arange(width)[None, :] < src_lengths[:, None], device)


@dataclass
class DecoderState:
    """What the decoder continues from: each layer's (h, c) [1, B, H], and with attention the top encoder
    layer's outputs [B, S, H] and which are real [B, S]."""

    layers: list[tuple[torch.Tensor, torch.Tensor]]
    memory: torch.Tensor | None = None
    mask: torch.Tensor | None = None

    def advanced(self, layers: list[tuple[torch.Tensor, torch.Tensor]]) -> DecoderState:
        """The same sentences after more steps."""
        return DecoderState(layers, self.memory, self.mask)

    def select(self, rows: torch.Tensor) -> DecoderState:
        """The states of these rows (a beam's surviving hypotheses)."""
        return DecoderState([(h.index_select(1, rows), c.index_select(1, rows)) for h, c in self.layers],
                            None if self.memory is None else self.memory.index_select(0, rows),
                            None if self.mask is None else self.mask.index_select(0, rows))


def softmax_input(hidden: torch.Tensor, *, layers: int, dropout: Dropout | None = None, start: int = 0) -> torch.Tensor:
    """The top decoder layer's outputs (of a model with `layers` layers) as the softmax reads them: dropped out
    at the softmax's site."""
    return hidden if dropout is None else dropout(hidden, input_site("decoder", layers), start)


def merge_softmax_shards(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`softmax.<i>.weight|bias` of any number of shards → one `softmax.weight` and `softmax.bias`."""
    merged = {k: v for k, v in state.items() if not k.startswith("softmax.")}
    count = len([k for k in state if k.startswith("softmax.") and k.endswith(".weight")])
    merged["softmax.weight"] = torch.cat([state[f"softmax.{i}.weight"] for i in range(count)])
    merged["softmax.bias"] = torch.cat([state[f"softmax.{i}.bias"] for i in range(count)])
    return merged
