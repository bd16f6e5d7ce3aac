"""The LSTM weights as cuDNN wants them: one flat buffer, each weight a view at cuDNN's offset.

cuDNN runs a (multi-layer) LSTM on one contiguous weight buffer. PyTorch passes it the weights'
storage when they are views into one buffer at exactly cuDNN's offsets (`try_get_weight_buf` in
aten/src/ATen/native/cudnn/RNN.cpp); otherwise it copies them into a new buffer at every call and warns.
`nn.LSTM` flattens each module's own weights, which serves a call of that one layer; a call of a whole
stack (one side's layers, each its own module and pipeline unit) needs the stack's weights in one
buffer, and a bf16 call needs a bf16 buffer. cuDNN's offsets are read off cuDNN itself
(`cudnn_layout`); `share` and `flat_cast` place weights at any layout, so they are tested on a CPU too.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Layout:
    """Where each weight starts in the flat buffer, and the buffer's length (elements)."""

    offsets: tuple[int, ...]
    numel: int


def packed_layout(shapes: list[tuple[int, ...]]) -> Layout:
    """The weights one after the other, no gaps."""
    offsets, position = [], 0
    for shape in shapes:
        offsets.append(position)
        position += math.prod(shape)
    return Layout(tuple(offsets), position)


@functools.cache
def cudnn_layout(shapes: tuple[tuple[int, ...], ...], dtype: torch.dtype, device: torch.device, *,
                 input_size: int, hidden_size: int, layers: int) -> Layout:
    """cuDNN's offsets for an LSTM stack of `layers` layers with these weight shapes (w_ih, w_hh, b_ih, b_hh a
    layer) in `dtype`, read from the views `torch._cudnn_rnn_flatten_weight` makes of stand-in tensors."""
    stand_ins = [torch.empty(shape, dtype=dtype, device=device) for shape in shapes]
    with torch.no_grad():
        buffer = torch._cudnn_rnn_flatten_weight(stand_ins, 4, input_size, _CUDNN_LSTM, hidden_size, 0, layers, True,
                                                 False)
    return Layout(tuple(t.storage_offset() - buffer.storage_offset() for t in stand_ins), buffer.numel())


_CUDNN_LSTM = 2
"""cudnnRNNMode_t CUDNN_LSTM (torch.backends.cudnn.rnn.get_cudnn_mode("LSTM"))."""


def share(weights: list[torch.nn.Parameter], layout: Layout) -> torch.Tensor:
    """Move the weights into one new buffer at `layout`'s offsets (their values and identities kept: the
    parameters become views of it, so optimizers, state dicts and checkpoints see no difference).
    Returns the buffer."""
    first = weights[0]
    buffer = torch.zeros(layout.numel, dtype=first.dtype, device=first.device)
    with torch.no_grad():
        for weight, offset in zip(weights, layout.offsets):
            view = buffer.narrow(0, offset, weight.numel()).view_as(weight)
            view.copy_(weight)
            weight.set_(buffer.untyped_storage(), offset, weight.shape, view.stride())
    return buffer


def placed_at(weights: list[torch.Tensor], layout: Layout) -> bool:
    """Whether the weights already are views of one storage at `layout`'s offsets from its start, the storage
    holding at least `layout.numel` elements: what PyTorch hands cuDNN as it is (`try_get_weight_buf`)."""
    storage = weights[0].untyped_storage()
    return (storage.nbytes() >= layout.numel * weights[0].element_size()
            and all(w.untyped_storage().data_ptr() == storage.data_ptr() and w.is_contiguous()
                    and w.storage_offset() == offset for w, offset in zip(weights, layout.offsets)))


def flat_cast(weights: list[torch.Tensor], layout: Layout, dtype: torch.dtype) -> list[torch.Tensor]:
    """The weights in `dtype` as views into one new buffer at `layout`'s offsets, differentiable: the gradient of
    each view reaches its weight (in the weight's dtype)."""
    pieces, position = [], 0
    order = sorted(range(len(weights)), key=lambda i: layout.offsets[i])
    for i in order:
        gap = layout.offsets[i] - position
        if gap:
            pieces.append(weights[i].new_zeros(gap, dtype=dtype))
        pieces.append(weights[i].reshape(-1).to(dtype))
        position = layout.offsets[i] + weights[i].numel()
    if layout.numel > position:
        pieces.append(weights[0].new_zeros(layout.numel - position, dtype=dtype))
    buffer = torch.cat(pieces)
    return [buffer.narrow(0, offset, w.numel()).view(w.shape) for w, offset in zip(weights, layout.offsets)]

