"""`train.precision`: which number format the matrix products run in, set in one place.

fp32 is the paper's and the exact path every equivalence test takes. tf32 lets CUDA's matrix
products and cuDNN's LSTMs use TF32 tensor cores (PyTorch leaves matmul TF32 off and cuDNN TF32 on
by default: both are set here, deliberately). bf16 runs the forward under `torch.autocast`: matrix
products and LSTM kernels in bf16, while parameters, gradients and the SGD update stay fp32 (so the
gradient norm, its clipping and the checkpoints are the fp32 ones), and the softmax's log-sum-exp,
the shard fold and the loss are computed in fp32 (`SoftmaxShard` and `cross_entropy` upcast).
DeepSpeed's own bf16 mode is not used: with ZeRO stage 0 it accumulates gradients in bf16 and skips
the engine's `clip_fp32_gradients`, where the project's global-norm clipping lives.
"""

from __future__ import annotations

import contextlib
import logging

import torch

from dist_s2s.model.layers import LSTMLayer

log = logging.getLogger(__name__)


def configure(precision: str) -> None:
    """Set the process-wide TF32 switches for this precision."""
    tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


def autocast(precision: str, device: torch.device):
    """The context a forward pass runs in."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def without_autocast(precision: str, device: torch.device):
    """A region inside an autocast one where autocast is off and its cache of cast weights kept."""
    if precision == "bf16":
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


class LSTMDtypeReport:
    """Logs once the dtype the LSTM kernels ran in and which kernel it was, read off their outputs
    (`LSTMLayer.kernel_dtype`, `.kernel`: the backward node's name) after the first forward: under autocast an RNN
    may run in another dtype than asked (PyTorch's cuDNN wrapper asks fp16; here a CUDA LSTM runs in bf16 where
    cuDNN has bf16 RNNs, else fp32: `model.layers.cuda_kernel_dtype`), and PyTorch's per-step fallback also
    outputs bf16, so only the kernel's name tells cuDNN from it (`CudnnRnnBackward0`)."""

    def __init__(self, precision: str):
        self.precision, self.dtype, self.kernel = precision, None, None

    def after_forward(self, model: torch.nn.Module) -> None:
        if self.dtype is not None:
            return
        layer = next((layer for layer in model.modules()
                      if isinstance(layer, LSTMLayer) and layer.kernel_dtype is not None), None)
        if layer is not None:
            self.dtype, self.kernel = layer.kernel_dtype, layer.kernel
            log.info("precision %s: the LSTM kernels ran in %s (%s)", self.precision, self.dtype,
                     self.kernel or "no backward node: evaluation")
