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


class LSTMDtypeProbe:
    """Records the dtype the first LSTM's kernel returned in the next forward, and logs it once: under
    autocast an RNN may run in another dtype than asked (cuDNN before 9.13 has no bf16 RNN)."""

    def __init__(self, lstm: torch.nn.Module, precision: str):
        self.precision, self.dtype = precision, None
        self.handle = lstm.register_forward_hook(self._seen)

    def _seen(self, module, inputs, outputs) -> None:
        output = outputs[0]
        self.dtype = (output.data if isinstance(output, torch.nn.utils.rnn.PackedSequence) else output).dtype
        log.info("precision %s: the LSTM kernels ran in %s", self.precision, self.dtype)
        self.handle.remove()
