"""The model's layers as pipeline units: tuple in, tuple out, as DeepSpeed's PipelineModule runs them.

Paper §3.5: each LSTM layer on its own GPU, the softmax split over 4 more. Unit k of the LSTM
part holds encoder layer k *and* decoder layer k: the decoder layer starts from that encoder
layer's final (h, c), so no recurrent state ever crosses a stage. The softmax shards follow,
each folding its vocabulary slice into the running log-sum-exp passed along with the decoder
output; integer tensors (lengths, targets, the sentences' dropout keys) ride along, every float
tensor passed on receives a gradient (DeepSpeed requires it), and tensors leave a unit contiguous (gloo requires it).
These wrap the model's modules (shared parameters), so a pipeline starts from the very weights
of the single-device model.
"""

from __future__ import annotations

import weakref

import torch
from torch import nn

from dist_s2s.errors import UserError
from dist_s2s.model.attention import GlobalAttention
from dist_s2s.model.dropout import Dropout
from dist_s2s.model.layers import LSTMLayer
from dist_s2s.model.seq2seq import Seq2Seq, attend, run_layer, softmax_input, source_mask
from dist_s2s.model.softmax import SoftmaxPartial, SoftmaxShard, masked_nll


class HostLengths:
    """The host copy of the lengths a 1F1B stage received on its device (DeepSpeed moves every input there), read
    once a micro-batch by the stage's first LSTM unit and reused by the others: `over_lengths` cuts its spans on
    the host, and reading device lengths at every layer would make the host wait each time."""

    def __init__(self):
        self.source: weakref.ref | None = None
        self.copy: torch.Tensor | None = None

    def of(self, lengths: torch.Tensor) -> torch.Tensor:
        if self.source is None or self.source() is not lengths:
            self.source, self.copy = weakref.ref(lengths), lengths.cpu()
        return self.copy


HOST_LENGTHS = HostLengths()
"""One a process: a process is one stage, whose units run one micro-batch at a time."""


class EmbeddingStage(nn.Module):
    """(src ids, src lengths, tgt_in ids, tgt_out ids, dropout keys) → embedded source and target."""

    def __init__(self, src_embed: nn.Embedding, tgt_embed: nn.Embedding):
        super().__init__()
        self.src_embed, self.tgt_embed = src_embed, tgt_embed

    def forward(self, inputs):
        src, src_lengths, tgt_in, tgt_out, keys = inputs
        return self.src_embed(src), src_lengths, self.tgt_embed(tgt_in), tgt_out, keys


class LSTMLayerStage(nn.Module):
    """Encoder layer k and decoder layer k, each input dropped out in training at `dropout` (the
    masks keyed by the sentences' `keys`, as on one device); the top pair passes on the decoder output
    only, its softmax-input dropout applied."""

    def __init__(self, encoder_layer: LSTMLayer, decoder_layer: LSTMLayer, *, layer: int, top: bool,
                 dropout: float = 0.0, attention: GlobalAttention | None = None):
        super().__init__()
        self.encoder_layer, self.decoder_layer, self.layer, self.top = encoder_layer, decoder_layer, layer, top
        self.dropout = dropout
        self.attention = attention
        """The top pair's: the model's global attention over this pair's encoder outputs, where it has one."""

    def forward(self, inputs):
        src_x, src_lengths, tgt_x, tgt_out, keys = inputs
        dropout = Dropout(self.dropout, keys) if self.training and self.dropout > 0 else None
        lengths = HOST_LENGTHS.of(src_lengths)
        src_h, state = run_layer(self.encoder_layer, src_x, side="encoder", index=self.layer, lengths=lengths,
                                 dropout=dropout)
        tgt_h, _ = run_layer(self.decoder_layer, tgt_x, side="decoder", index=self.layer, state=state, dropout=dropout)
        if self.top:  # the top encoder outputs stay here: only this pair's attention reads them
            if self.attention is not None:
                tgt_h = attend(self.attention, tgt_h, src_h, source_mask(lengths, src_h.shape[1], src_h.device))
            return softmax_input(tgt_h, layers=self.layer + 1, dropout=dropout).contiguous(), tgt_out
        return src_h.contiguous(), src_lengths, tgt_h.contiguous(), tgt_out, keys


class SoftmaxShardStage(nn.Module):
    """One vocabulary slice of the softmax; the last returns each target word's NLL [N]."""

    def __init__(self, shard: SoftmaxShard, first: bool, last: bool):
        super().__init__()
        self.shard, self.first, self.last = shard, first, last

    def forward(self, inputs):
        if self.first:  # every position, padding's NLL zeroed at the end: a boolean mask's selection would make
            tgt_h, tgt_out = inputs  # the host wait for the device to count it
            hidden, targets = tgt_h.flatten(0, 1).contiguous(), tgt_out.flatten().contiguous()
            state = None
        else:
            hidden, targets, *running = inputs
            state = SoftmaxPartial(*running)
        state = self.shard(hidden, targets, state)
        if self.last:
            return masked_nll(state, targets)
        return (hidden, targets, *state)


def scaled_nll(token_nll: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The pipeline's loss (DeepSpeed's `loss_fn`): a micro-batch's summed token NLL times the scale riding in as
    its label."""
    return token_nll.sum() * scale.to(token_nll.dtype)


def pipeline_units(model: Seq2Seq) -> list[nn.Module]:
    """[embeddings, LSTM pair 0 … L-1, softmax shard 0 … S-1], sharing the model's parameters."""
    layers = len(model.encoder)
    shards = len(model.softmax)
    return [
        EmbeddingStage(model.src_embed, model.tgt_embed),
        *[LSTMLayerStage(model.encoder[k], model.decoder[k], layer=k, top=k == layers - 1,
                         dropout=model.config.dropout, attention=model.attention if k == layers - 1 else None)
          for k in range(layers)],
        *[SoftmaxShardStage(model.softmax[s], first=s == 0, last=s == shards - 1) for s in range(shards)],
    ]


def stage_boundaries(num_layers: int, num_shards: int, stages: int) -> list[int]:
    """DeepSpeed `parts`: unit index where each stage starts, plus the end.

    The L LSTM pairs and S shards are dealt to the stages in order, as evenly as counts allow;
    the embeddings join the first stage (placing by parameter count would give the 240M
    embedding parameters of the paper's model a stage to themselves). With L + S stages this is
    the paper's layout: one LSTM layer pair or one softmax shard per device.
    """
    units = num_layers + num_shards
    if stages > units:
        raise UserError(f"parallel.stages={stages} exceeds the {num_layers} LSTM layers + {num_shards} softmax "
                        f"shards that can be placed (model.num_layers + model.softmax_shards = {units})")
    base, extra = divmod(units, stages)
    parts, start = [0], 1  # unit 0 (embeddings) always goes with the first stage
    for stage in range(stages):
        start += base + (1 if stage < extra else 0)
        parts.append(start)
    return parts
