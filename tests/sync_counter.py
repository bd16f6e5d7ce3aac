"""Counting the calls that would make a GPU and its host wait for each other, on a CPU.

`SyncCounter` is a `TorchFunctionMode`: every tensor function called inside it passes through, and
the ones that read a device value on the host are counted: `item`, `__bool__` (an `if` on a
tensor), `__int__`, `__float__`, `tolist`, `cpu`, `nonzero` (its output size depends on the
data) and indexing with a boolean mask (the same). Tensors that live on the host by design (a
batch's CPU copy of its lengths) are passed as `host`, and what is computed from host tensors
alone is host too, so reading them is not counted: on a GPU that costs no synchronization.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch.overrides import TorchFunctionMode

READS = {"item", "__bool__", "__int__", "__float__", "tolist", "cpu", "nonzero"}


def _tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in _tensors(item)]
    if isinstance(value, dict):
        return [t for item in value.values() for t in _tensors(item)]
    return []


class SyncCounter(TorchFunctionMode):
    def __init__(self, host: list[torch.Tensor] = ()):
        super().__init__()
        self.host = {id(t) for t in host}
        self.kept = list(host)  # ids stay valid while the tensors live
        self.calls: Counter = Counter()

    @property
    def total(self) -> int:
        return sum(self.calls.values())

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        inputs = _tensors(args) + _tensors(kwargs)
        on_host = bool(inputs) and all(id(t) in self.host for t in inputs)
        if not on_host:
            if name in READS:
                self.calls[name] += 1
            elif name == "__getitem__" and any(t.dtype == torch.bool for t in _tensors(args[1:])):
                self.calls["boolean index"] += 1
        result = func(*args, **kwargs)
        if on_host:
            for tensor in _tensors(result):
                self.host.add(id(tensor))
                self.kept.append(tensor)
        return result
