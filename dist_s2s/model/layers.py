"""The LSTM layers the model is built from, one module per unit a pipeline stage can hold.

Paper §3.5 put each LSTM layer and each quarter of the softmax on its own GPU; `LSTMLayer` (one fused
`nn.LSTM` layer) is the first kind of unit, `softmax.SoftmaxShard` (one vocabulary slice) the second.
"""

from __future__ import annotations

import torch
from torch import nn

from dist_s2s.device import to_device
from dist_s2s.model import flat_weights


def at_least_fp32(tensor: torch.Tensor) -> torch.Tensor:
    """bf16 / fp16 values upcast to fp32 (where a sum or an exp needs the mantissa); fp32 and fp64 as they are."""
    return tensor.float() if tensor.is_floating_point() and tensor.element_size() < 4 else tensor


class LSTMLayer(nn.Module):
    """One LSTM layer on the fused kernel (cuDNN on GPU, oneDNN/native on CPU)."""

    kernel_dtype: torch.dtype | None = None
    """The dtype the kernel last ran in, read from its outputs (under autocast it may differ from the asked)."""
    kernel: str | None = None
    """Which kernel last ran, read from its outputs' `grad_fn` (`kernel_name`); None without gradients."""

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
        return over_lengths(fused([self]), inputs, lengths, state)


def over_lengths(run, inputs: torch.Tensor, lengths: torch.Tensor | None, state):
    """`run` (`fused(layers)`: one layer, or several in one kernel call) over padded `inputs`,
    each sentence to its own length (`lengths` on the host, where a batch keeps them).

    The steps are cut at every distinct length, and each span runs the whole batch through the fused
    kernel; a sentence that has ended keeps the state it ended with and outputs zeros (a length of 0,
    a time chunk past a sentence's end, keeps the state it came with). Never a `PackedSequence` or a
    subset of rows: on CPU packed input falls back to the slower native kernel, every new number of rows
    is a new oneDNN primitive to build, and packing moves index tensors between host and device, which a
    GPU waits for (docs/benchmarks.md). The masks are built on the host.
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


def fused(layers: list[LSTMLayer]):
    """The layers as one fused LSTM call on their own weights (no copy, same checkpoint format): one layer, or
    a stack of them, which cuDNN overlaps layer by layer (separate calls cannot). States are [L, B, H].

    On CUDA under autocast the call runs outside it, in `cuda_kernel_dtype`: PyTorch's autocast wrapper for
    cuDNN RNNs would run it in fp16 whatever dtype autocast asks for."""
    weights = [w for layer in layers for w in layer.lstm._flat_weights]
    size, count = layers[0].lstm.hidden_size, len(layers)
    training = layers[0].training

    def run(inputs, state):
        if state is None:
            zeros = inputs.new_zeros(count, inputs.shape[0], size)
            state = (zeros, zeros)
        dtype = cuda_kernel_dtype(inputs.device)
        if dtype is None and not inputs.is_cuda:
            outputs, h, c = torch._VF.lstm(inputs, state, weights, True, count, 0.0, training, False, True)
        else:
            dtype = dtype or weights[0].dtype
            with torch.autocast("cuda", enabled=False):
                outputs, h, c = torch._VF.lstm(inputs.to(dtype), tuple(s.to(dtype) for s in state),
                                               kernel_weights(layers, dtype), True, count, 0.0, training, False, True)
        layers[0].kernel_dtype, layers[0].kernel = outputs.dtype, kernel_name(outputs)
        return outputs, (h, c)

    return run


def cuda_kernel_dtype(device: torch.device) -> torch.dtype | None:
    """On CUDA under autocast, the dtype the LSTM kernel runs in: autocast's, where cuDNN has RNNs in it (bf16
    from cuDNN 9.13), else fp32, never fp16 unasked (it would need a loss scaler). None elsewhere: the call as
    it is (on a CPU autocast runs oneDNN's LSTM in bf16 itself)."""
    if device.type != "cuda" or not torch.is_autocast_enabled("cuda"):
        return None
    asked = torch.get_autocast_dtype("cuda")
    if asked == torch.bfloat16 and not cudnn_has_bf16_rnn(device):
        return torch.float32
    return asked


CUDNN_BF16_RNN = 91300
"""cuDNN 9.13: the first with bf16 RNNs that PyTorch uses (pytorch/pytorch#164411)."""
BF16_CAPABILITY = (8, 0)
"""Ampere and later: the GPUs with bf16 arithmetic."""


def cudnn_has_bf16_rnn(device: torch.device | None = None, *, built: int | None = None, loaded: int | None = None,
                       capability: tuple[int, int] | None = None) -> bool:
    """Whether PyTorch runs an LSTM on `device` through cuDNN in bf16: PyTorch built against cuDNN 9.13 or later
    (its bf16 path is compiled in only then), that cuDNN or later loaded, and a GPU of compute capability 8.0 or
    more. Elsewhere a bf16 LSTM runs PyTorch's per-step fallback, slower than fp32 on cuDNN. The keywords stand in
    for what the machine says (tests)."""
    built = _cudnn_build_version() if built is None else built
    loaded = (torch.backends.cudnn.version() or 0) if loaded is None else loaded
    if capability is None:
        capability = torch.cuda.get_device_capability(device) if torch.cuda.is_available() else (0, 0)
    return built >= CUDNN_BF16_RNN and loaded >= CUDNN_BF16_RNN and tuple(capability) >= BF16_CAPABILITY


def _cudnn_build_version() -> int:
    """The cuDNN version PyTorch was compiled against, as cuDNN numbers it (9.13.0 → 91300); 0 without cuDNN."""
    try:
        major, minor, patch = torch._C._cudnn.getCompileVersion()
    except (AttributeError, RuntimeError):
        return 0
    return major * 10000 + minor * 100 + patch


def kernel_name(outputs: torch.Tensor) -> str | None:
    """The LSTM kernel that made `outputs`, by its backward node under the batch-first transpose: `CudnnRnnBackward0`
    on cuDNN, `MkldnnRnnLayerBackward0` on oneDNN, the per-step cells' nodes on PyTorch's fallback (whose outputs
    are bf16 under bf16 too, so the dtype alone cannot tell cuDNN from it). None without gradients."""
    node = outputs.grad_fn
    while node is not None and node.name().startswith(("Transpose", "View", "Alias")) and node.next_functions:
        node = node.next_functions[0][0]
    return None if node is None else node.name()


def kernel_weights(layers: list[LSTMLayer], dtype: torch.dtype) -> list[torch.Tensor]:
    """The layers' weights for one cuDNN call in `dtype`: as they are where cuDNN takes them so (in `dtype`, one
    buffer at its offsets for this many layers), else cast into such a buffer (differentiable) once for this
    version of the weights, and kept: every span, chunk and micro-batch of a step reuses it, an optimizer
    step's in-place update makes the next call cast again. Without it each call copied the weights, and a single
    layer's call into a stack's shared buffer warned each time (the buffer is laid out for the stack)."""
    weights = [w for layer in layers for w in layer.lstm._flat_weights]
    first = layers[0].lstm
    layout = flat_weights.cudnn_layout(tuple(tuple(w.shape) for w in weights), dtype, weights[0].device,
                                       input_size=first.input_size, hidden_size=first.hidden_size, layers=len(layers))
    if weights[0].dtype == dtype and flat_weights.placed_at(weights, layout):
        return weights
    key = (dtype, torch.is_grad_enabled(), tuple((id(w), w._version) for w in weights))
    cached = layers[0].__dict__.get("_kernel_weights")
    if cached is None or cached[0] != key:
        cached = (key, flat_weights.flat_cast(weights, layout, dtype))
        layers[0].__dict__["_kernel_weights"] = cached
    return cached[1]


def share_stack_buffer(layers: list[LSTMLayer]) -> None:
    """On CUDA, the layers' weights moved into one buffer laid out as cuDNN lays out their stack, so a fused call
    of the whole stack copies nothing (each `nn.LSTM` flattens only its own layer). Nothing elsewhere."""
    weights = [w for layer in layers for w in layer.lstm._flat_weights]
    if not weights[0].is_cuda or not torch.backends.cudnn.is_acceptable(weights[0]):
        return
    first = layers[0].lstm
    layout = flat_weights.cudnn_layout(tuple(tuple(w.shape) for w in weights), weights[0].dtype, weights[0].device,
                                       input_size=first.input_size, hidden_size=first.hidden_size, layers=len(layers))
    flat_weights.share(weights, layout)
