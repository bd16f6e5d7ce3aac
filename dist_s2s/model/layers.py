"""The LSTM layers the model is built from, one module per unit a pipeline stage can hold.

Paper §3.5 put each LSTM layer and each quarter of the softmax on its own GPU; `LSTMLayer` (one fused
`nn.LSTM` layer) is the first kind of unit, `softmax.SoftmaxShard` (one vocabulary slice) the second.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence


def at_least_fp32(tensor: torch.Tensor) -> torch.Tensor:
    """bf16 / fp16 values upcast to fp32 (where a sum or an exp needs the mantissa); fp32 and fp64 as they are."""
    return tensor.float() if tensor.is_floating_point() and tensor.element_size() < 4 else tensor


class LSTMLayer(nn.Module):
    """One LSTM layer on the fused kernel (cuDNN on GPU, oneDNN/native on CPU)."""

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden_size, num_layers=1, batch_first=True)

    def forward(self, inputs: torch.Tensor, lengths: torch.Tensor | None = None,
                state: tuple[torch.Tensor, torch.Tensor] | None = None):
        """inputs [B, T, I] → outputs [B, T, H] (zero past each length), final (h, c) each [1, B, H].

        With `lengths`, padded steps never touch the state, so the final (h, c) is each
        sentence's own (what the decoder starts from, §3.2); a length of 0 (a time chunk past the
        sentence's end) leaves its state as it came. Without, every position is run; callers mask
        what lies past each length.
        """
        return over_lengths(self.lstm, inputs, lengths, state)


def over_lengths(run, inputs: torch.Tensor, lengths: torch.Tensor | None, state):
    """`run` (an `nn.LSTM`, or `stacked(...)`: several layers in one kernel call) over padded `inputs`,
    each sentence to its own length.

    The steps every sentence still takes run padded, the rest packed: on CPU only padded
    input reaches oneDNN's fused LSTM (measured 24% faster than the native kernel packed
    input falls back to), and a bucketed batch spends ~90% of its steps in that common prefix.
    """
    if lengths is None:
        return run(inputs, state)
    # `lengths` on the host (a batch keeps them there): these reads cost no device synchronization
    shortest, longest = int(lengths.min()), int(lengths.max())
    if shortest == 0:  # sentences already ended (a time chunk past their end): their state is kept as it is
        return _with_ended_rows(run, inputs, lengths, state)
    outputs, (h, c) = run(inputs[:, :shortest], state)
    if longest > shortest:
        running_rows = torch.nonzero(lengths > shortest).squeeze(1)
        rest_lengths = (lengths[running_rows] - shortest).cpu()
        running = running_rows.to(inputs.device, non_blocking=True)
        rest = pack_padded_sequence(inputs[running, shortest:longest], rest_lengths,
                                    batch_first=True, enforce_sorted=False)
        rest, (rest_h, rest_c) = run(rest, (h[:, running], c[:, running]))
        rest, _ = pad_packed_sequence(rest, batch_first=True, total_length=longest - shortest)
        tail = outputs.new_zeros(len(lengths), longest - shortest, outputs.shape[2]).index_copy(0, running, rest)
        outputs = torch.cat([outputs, tail], dim=1)
        h, c = h.index_copy(1, running, rest_h), c.index_copy(1, running, rest_c)
    if inputs.shape[1] > longest:  # padded wider than its longest sentence (a batch is trimmed to it)
        outputs = nn.functional.pad(outputs, (0, 0, 0, inputs.shape[1] - longest))
    return outputs, (h, c)


def _with_ended_rows(run, inputs: torch.Tensor, lengths: torch.Tensor, state):
    """`over_lengths` on the rows that still have steps; the others output zeros and keep their state."""
    running = lengths > 0
    rows = torch.nonzero(running).squeeze(1).to(inputs.device, non_blocking=True)
    kept = None if state is None else (state[0][:, rows], state[1][:, rows])
    outputs, (h, c) = over_lengths(run, inputs[rows], lengths[running], kept)
    if state is None:
        zeros = h.new_zeros(h.shape[0], inputs.shape[0], h.shape[2])
        state = (zeros, zeros)
    full = outputs.new_zeros(inputs.shape[0], inputs.shape[1], outputs.shape[2]).index_copy(0, rows, outputs)
    return full, (state[0].index_copy(1, rows, h), state[1].index_copy(1, rows, c))


def stacked(layers: list[LSTMLayer]):
    """The layers as one multi-layer LSTM call on their own weights (no copy, same checkpoint format):
    cuDNN then overlaps the layers of the stack, which separate calls cannot. States are [L, B, H]."""
    weights = [w for layer in layers for w in layer.lstm._flat_weights]
    size, count = layers[0].lstm.hidden_size, len(layers)
    training = layers[0].training

    def run(inputs, state):
        packed = isinstance(inputs, PackedSequence)
        data = inputs.data if packed else inputs
        if state is None:
            rows = int(inputs.batch_sizes[0]) if packed else data.shape[0]
            zeros = data.new_zeros(count, rows, size)
            state = (zeros, zeros)
        if not packed:
            outputs, h, c = torch._VF.lstm(data, state, weights, True, count, 0.0, training, False, True)
            return outputs, (h, c)
        order = inputs.sorted_indices
        state = (state[0].index_select(1, order), state[1].index_select(1, order)) if order is not None else state
        outputs, h, c = torch._VF.lstm(data, inputs.batch_sizes, state, weights, True, count, 0.0, training, False)
        back = inputs.unsorted_indices
        if back is not None:
            h, c = h.index_select(1, back), c.index_select(1, back)
        return PackedSequence(outputs, inputs.batch_sizes, inputs.sorted_indices, inputs.unsorted_indices), (h, c)

    return run
