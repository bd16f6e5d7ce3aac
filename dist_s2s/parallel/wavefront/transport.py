"""Messages between stages that run in one process: handed over in memory.

The same step program and `StageOperations` then run every stage in one process: how the correctness
tests compare the chunked arithmetic with one device, and how the simulator times each operation.
"""

from __future__ import annotations

import torch

from dist_s2s.parallel.wavefront.program import Message


class LocalTransport:
    def __init__(self):
        self.tensors: dict[Message, torch.Tensor] = {}

    def send(self, message: Message, tensor: torch.Tensor) -> None:
        self.tensors[message] = tensor.detach()

    def receive(self, message: Message) -> torch.Tensor:
        return self.tensors.pop(message)
