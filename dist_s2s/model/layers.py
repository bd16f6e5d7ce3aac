"""The LSTM layers the model is built from, one module per unit a pipeline stage can hold.

Paper §3.5 put each LSTM layer and each quarter of the softmax on its own GPU; `LSTMLayer` (one fused
`nn.LSTM` layer) is the first kind of unit, `softmax.SoftmaxShard` (one vocabulary slice) the second.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence


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
    each sentence to its own length (`lengths` on the host, where a batch keeps them).

    The steps are cut at every distinct length, and each span runs the whole batch through the fused
    kernel; a sentence that has ended keeps the state it ended with and outputs zeros (a length of 0,
    a time chunk past a sentence's end, keeps the state it came with). Never a `PackedSequence` or a
    subset of rows: on CPU packed input falls back to the native kernel (whose backward measured 5×
    slower), every new number of rows is a new oneDNN primitive to build (~1 ms each), and packing moves
    index tensors between host and device, which a GPU waits for. The masks are built on the host.
    """
    if lengths is None:
        return run(inputs, state)
    pieces, start = [], 0
    for stop in sorted(set(lengths.tolist()) - {0}):
        outputs, ran = run(inputs[:, start:stop], state)
        ended = lengths <= start
        if bool(ended.any()):
            keep = to_device(ended, inputs.device)
            before = state if state is not None else (torch.zeros_like(ran[0]), torch.zeros_like(ran[1]))
            ran = tuple(torch.where(keep[None, :, None], old, new) for old, new in zip(before, ran))
            outputs = outputs * to_device(~ended, inputs.device)[:, None, None].to(outputs.dtype)
        pieces.append(outputs)
        state, start = ran, stop
    if not pieces:
        raise ValueError("over_lengths: no sentence has a step in this span (every length is 0)")
    outputs = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=1)
    if inputs.shape[1] > start:  # padded wider than its longest sentence (a batch is trimmed to it)
        outputs = nn.functional.pad(outputs, (0, 0, 0, inputs.shape[1] - start))
    return outputs, state


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device` without the host waiting: a GPU copy from pinned memory is asynchronous,
    one from pageable memory waits for the device's queue first."""
    if device.type != "cuda":
        return tensor
    return tensor.pin_memory().to(device, non_blocking=True)


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
