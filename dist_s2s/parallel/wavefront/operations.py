"""What each operation of the wavefront's step program computes on one stage (`program.py` says when).

Kept apart from the engine so the same code runs two ways: one stage per process under
`WavefrontEngine` (messages over deepspeed.comm), or every stage in one process, messages handed
over in memory, which is how the schedule simulator measures each operation's cost.

Within a stage a chunk's activations and state are leaves of the next chunk's graph (detached,
requiring grad): the backward of chunk g returns d(h, c) of its initial state, which becomes the
output-state gradient of chunk g - 1. Chained over all chunks that is backpropagation through the
whole sequence, exactly as one `autograd.backward` over the unchunked model would compute it.
"""

from __future__ import annotations

from typing import Protocol

import torch

from dist_s2s.data.batch import Batch
from dist_s2s.device import to_device
from dist_s2s.model.dropout import Dropout
from dist_s2s.model.layers import at_least_fp32
from dist_s2s.model.seq2seq import Seq2Seq, attend, run_layer, softmax_input, source_mask
from dist_s2s.model.softmax import SoftmaxPartial, merge_all
from dist_s2s.parallel.placement import Placement
from dist_s2s.parallel.wavefront.program import Message, Operation, TimeChunk
from dist_s2s.train.precision import autocast, without_autocast

FORWARD_KINDS = ("act", "hidden", "partial")
"""Messages that are activations: received as leaves that collect their gradient."""


class Transport(Protocol):
    def send(self, message: Message, tensor: torch.Tensor) -> None: ...

    def receive(self, message: Message) -> torch.Tensor: ...


def as_received(message: Message, tensor: torch.Tensor) -> torch.Tensor:
    """An activation arrives as a leaf that will hold its gradient; a gradient arrives as it is."""
    if message.kind in FORWARD_KINDS and torch.is_grad_enabled():
        return tensor.detach().requires_grad_()
    return tensor


def message_shape(message: Message, batch: Batch, chunks: list[TimeChunk], hidden_size: int) -> tuple[int, ...]:
    """Every rank computes every message's shape from the batch it holds: no shape exchange."""
    chunk = chunks[message.chunk]
    if message.kind in ("act", "grad_act"):
        return (batch.src.shape[0], chunk.width, hidden_size)
    tokens = int((batch.tgt_lengths - chunk.start).clamp(0, chunk.width).sum())  # host lengths: no device read
    if message.kind in ("hidden", "grad_hidden"):
        return (tokens, hidden_size)
    return (3, tokens)


class StageOperations:
    """One stage's part of one step: its LSTM layers' carried state, the graphs kept for backward,
    and the summed NLL (on the top stage)."""

    def __init__(self, model: Seq2Seq, placement: Placement, stage: int, *, batch: Batch, chunks: list[TimeChunk],
                 loss_scale: float, transport: Transport, precision: str = "fp32", dropout: Dropout | None = None):
        self.model, self.placement, self.stage, self.batch, self.chunks = model, placement, stage, batch, chunks
        self.loss_scale, self.transport, self.precision = loss_scale, transport, precision
        self.dropout = dropout
        """The step's dropout (None: none, or not training); its masks are keyed by position, so a chunk
        draws its own slice of the masks one device draws for the whole batch."""
        self.nll = torch.zeros((), dtype=torch.float64, device=batch.src.device)
        self.records: dict[tuple[int, int], dict] = {}
        self.carried: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.state_grads: dict[tuple[int, int], tuple[torch.Tensor, ...]] = {}
        self.softmax_records: dict[int, dict] = {}
        self.real_positions: dict[int, torch.Tensor] = {}
        self.deferred_softmax: dict[int, list] = {shard: [] for shard in placement.shards[stage]}
        """Per shard, (hidden, d logits) of each decoder chunk: what W turns into its weight gradients."""
        self.embedded: dict[bool, list[tuple[torch.Tensor, torch.Tensor]]] = {False: [], True: []}
        """Per side (decoder or not), each chunk's (ids, embeddings): E back-propagates them at once."""
        self.memory_pieces: list[torch.Tensor] = []
        """With attention, on the top stage: each encoder chunk's top-layer outputs, in order."""
        self.memory: torch.Tensor | None = None
        """Their concatenation [B, S, H], a leaf the decoder chunks attend over: its gradient, summed over the
        decoder chunks' backward passes, goes back into each encoder chunk's backward."""

    def run(self, op: Operation) -> None:
        """Forward passes run in train.precision; the backward ones follow their dtypes, outside autocast
        (which a caller may hold open around the whole step, so that its weight casts are made once)."""
        if op.kind in ("F", "P"):
            with autocast(self.precision, self.batch.src.device):
                {"F": self._forward, "P": self._softmax_partials}[op.kind](op)
            return
        with without_autocast(self.precision, self.batch.src.device):
            self._backward_kind(op)

    def _backward_kind(self, op: Operation) -> None:
        {"L": self._softmax_loss, "Q": self._softmax_backward, "B": self._backward, "W": self._softmax_weight_grads,
         "E": self._embedding_grads}[op.kind](op)

    def _receive(self, message: Message) -> torch.Tensor:
        return as_received(message, self.transport.receive(message))

    def _chunk_input(self, chunk: TimeChunk) -> torch.Tensor:
        """The chunk's embeddings, as a leaf whose gradient E takes to the embedding weights."""
        ids = (self.batch.tgt_in if chunk.decoder else self.batch.src)[:, chunk.start:chunk.stop]
        embedding = self.model.tgt_embed if chunk.decoder else self.model.src_embed
        if not torch.is_grad_enabled():
            return embedding(ids)
        with torch.no_grad():
            embedded = embedding(ids).requires_grad_()
        self.embedded[chunk.decoder].append((ids, embedded))
        return embedded

    def _forward(self, op: Operation) -> None:
        chunk, (_, layers) = op.chunk, self.placement.hops[op.hop]
        inputs = self._receive(op.receives[0]) if op.receives else self._chunk_input(chunk)
        lengths = (self.batch.src_lengths - chunk.start).clamp(0, chunk.width)
        hidden, state_in, state_out = inputs, {}, {}
        side = "decoder" if chunk.decoder else "encoder"
        for layer in layers:
            state_in[layer] = self.carried.get(layer)
            hidden, state = run_layer(getattr(self.model, side)[layer], hidden, side=side, index=layer,
                                      lengths=None if chunk.decoder else lengths, state=state_in[layer],
                                      dropout=self.dropout, start=chunk.start)
            state_out[layer] = state
            self.carried[layer] = tuple(t.detach().requires_grad_(torch.is_grad_enabled()) for t in state)
        top = op.hop == len(self.placement.hops) - 1
        attention = self.model.attention if top else None
        record = {"inputs": inputs, "state_in": state_in, "state_out": state_out}
        if attention is not None and not chunk.decoder:
            record["memory_piece"] = hidden
            self.memory_pieces.append(hidden)
        if attention is not None and chunk.decoder:
            hidden = attend(attention, hidden, *self._memory())
        if chunk.decoder and top:  # the softmax's input, in the LSTM's dtype
            hidden = softmax_input(hidden, layers=len(self.model.decoder), dropout=self.dropout, start=chunk.start)
        hidden = at_least_fp32(hidden)  # what leaves a stage is fp32 (the bf16 LSTM's output upcast)
        record["outputs"] = hidden
        if chunk.decoder and top:
            record["outputs"] = hidden = hidden.flatten(0, 1).index_select(0, self._real_positions(chunk))
        for message in op.sends:
            self.transport.send(message, hidden)
        if torch.is_grad_enabled():
            self.records[(chunk.index, op.hop)] = record

    def _memory(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The top encoder layer's outputs over the whole source (made once, after the encoder's last chunk) and
        which positions are real."""
        if self.memory is None:
            self.memory = torch.cat(self.memory_pieces, dim=1).detach().requires_grad_(torch.is_grad_enabled())
            self.memory_pieces.clear()
        return self.memory, source_mask(self.batch.src_lengths, self.memory.shape[1], self.memory.device)

    def _targets(self, chunk: TimeChunk) -> torch.Tensor:
        return self.batch.tgt_out[:, chunk.start:chunk.stop].reshape(-1).index_select(0, self._real_positions(chunk))

    def _real_positions(self, chunk: TimeChunk) -> torch.Tensor:
        """Flat indices (row-major over [B, chunk width]) of the chunk's real target positions, what a boolean
        mask of non-padding would select, built on the host from the host lengths and moved without blocking:
        a mask's selection would make the host wait for the device to count it."""
        if chunk.index not in self.real_positions:
            lengths = (self.batch.tgt_lengths - chunk.start).clamp(0, chunk.width)
            real = torch.arange(chunk.width)[None, :] < lengths[:, None]
            self.real_positions[chunk.index] = to_device(real.flatten().nonzero().squeeze(1), self.batch.src.device)
        return self.real_positions[chunk.index]

    def _softmax_partials(self, op: Operation) -> None:
        hidden = self._receive(op.receives[0])
        state, targets, logits = None, self._targets(op.chunk), {}
        for shard in self.placement.shards[self.stage]:
            state, logits[shard] = self.model.softmax[shard].forward_deferring_weight_grads(hidden, targets, state)
        partial = torch.stack(tuple(state))
        self.transport.send(op.sends[0], partial)
        if torch.is_grad_enabled():
            self.softmax_records[op.chunk.index] = {"hidden": hidden, "partial": partial, "logits": logits}

    def _softmax_loss(self, op: Operation) -> None:
        """log-sum-exp over every shard's partial (max, Σ exp, target logit): the loss of one chunk."""
        partials = [self._receive(message) for message in op.receives]
        nll = merge_all([SoftmaxPartial(*partial) for partial in partials]).nll()
        self.nll += nll.detach().sum().to(torch.float64)
        if not op.sends:
            return
        (nll.sum() * self.loss_scale).backward()
        for message, partial in zip(op.sends, partials):
            self.transport.send(message, partial.grad)

    def _softmax_backward(self, op: Operation) -> None:
        """d hidden, sent back, and each shard's d logits, kept for W: the weights' products wait."""
        record = self.softmax_records.pop(op.chunk.index)
        shards = list(record["logits"])
        grads = torch.autograd.grad(record["partial"], [record["hidden"], *record["logits"].values()],
                                    self._receive(op.receives[0]))
        for shard, grad in zip(shards, grads[1:]):
            self.deferred_softmax[shard].append((record["hidden"], grad))
        self.transport.send(op.sends[0], grads[0])

    def _softmax_weight_grads(self, op: Operation) -> None:
        for shard, deferred in self.deferred_softmax.items():
            self.model.softmax[shard].add_weight_grads(deferred)
            deferred.clear()

    def _embedding_grads(self, op: Operation) -> None:
        chunks = self.embedded[op.chunk.decoder]
        embedding = self.model.tgt_embed if op.chunk.decoder else self.model.src_embed
        ids = torch.cat([ids for ids, _ in chunks], dim=1)
        grads = torch.cat([embedded.grad for _, embedded in chunks], dim=1)
        torch.autograd.backward(embedding(ids), grads)
        chunks.clear()

    def _backward(self, op: Operation) -> None:
        chunk = op.chunk
        record = self.records.pop((chunk.index, op.hop))
        tensors, grads = [], []
        if op.receives:
            received = [self._receive(message) for message in op.receives]
            tensors.append(record["outputs"])
            grads.append(received[0] if len(received) == 1 else torch.stack(received).sum(dim=0))
        if "memory_piece" in record and self.memory.grad is not None:  # what the decoder's attention sent back
            tensors.append(record["memory_piece"])
            grads.append(self.memory.grad[:, chunk.start:chunk.stop])
        for layer, state in record["state_out"].items():
            carried = self.state_grads.pop((chunk.index, layer), None)
            if carried is not None:
                tensors += list(state)
                grads += list(carried)
        if tensors:
            torch.autograd.backward(tensors, grads)
        for layer, state in record["state_in"].items():
            if state is not None and chunk.index > 0:
                self.state_grads[(chunk.index - 1, layer)] = tuple(
                    t.grad if t.grad is not None else torch.zeros_like(t) for t in state)
        for message in op.sends:
            self.transport.send(message, record["inputs"].grad)
