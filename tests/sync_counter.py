"""Counting, on a CPU, the calls that would make a GPU's host wait for the device.

On a CPU every tensor is on the host, so nothing ever waits. `SyncCounter` (a `TorchFunctionMode`: every
tensor function called inside it passes through) tracks where each tensor *would* live in a CUDA run:
- on the device: the tensors it is given as `device` (parameters, what DeepSpeed moves), what a creation
  op makes with an explicit `device=` other than the literal string "cpu" (code that names the host so,
  like torch.optim's step counts, means the host on every machine), what `.to(device, non_blocking=True)`
  moves there, and whatever is computed from a device tensor;
- on the host: everything else (a batch's lengths, indices built from them, Python numbers made tensors).

Counted, each a wait on a GPU:
- a device value read on the host: `item`, `__bool__` (an `if` on a tensor), `__int__`, `__float__`,
  `tolist`, `cpu`, `numpy`, a `.to("cpu")`;
- an operation whose output size depends on device values: `nonzero`, `unique`, `masked_select`, indexing
  with a boolean mask;
- a host tensor (not a 0-dim scalar) used to index a device tensor, copied into one, moved to the device
  without `non_blocking=True`, or made there from Python data (`torch.tensor(data, device=...)`): a copy from
  pageable host memory that the host waits for (`pack_padded_sequence`'s index tensors, a list of limits).

Raised, as CUDA raises it (`DeviceMismatch`): any other operation given a host tensor (not a 0-dim scalar) and
a device tensor ("Expected all tensors to be on the same device"), and pinning a device tensor ("only dense CPU
tensors can be pinned"). A test that runs a command under the counter therefore fails where the command would
fail on a GPU.
"""

from __future__ import annotations

import traceback
from collections import Counter

import torch
from torch.overrides import TorchFunctionMode

TRAIN_STEP_BUDGET = 0
"""A single-device training step: nothing (the loop reads the loss and the norm once a log line)."""
WAVEFRONT_STEP_BUDGET = 0
"""A wavefront stage's whole step, the optimizer step and the loss's all-reduce included: nothing."""
ONE_F_ONE_B_STAGE_BUDGET = 1
"""Per stage and micro-batch of DeepSpeed's 1F1B: its lengths, read once (DeepSpeed moved them to the device)."""
BEAM_STEP_BUDGET = 1
"""Per decoder step of a beam search: the stop test's flag."""
BEAM_RESULT_READS = 5
"""Once a search: the complete hypotheses' rankings, scores, lengths, words and member scores."""

class DeviceMismatch(RuntimeError):
    """What CUDA would raise: a host tensor where a device tensor is needed, or a device tensor pinned."""


HOST_TENSORS_ALLOWED = {"__getitem__", "__setitem__", "index_put", "index_put_", "copy_", "_pack_padded_sequence",
                        "_pad_packed_sequence"}
"""Operations that take a host tensor beside device tensors on CUDA: an index or a source copied first (the host
waiting), and packing's lengths, which must be on the host."""
READS = {"item", "__bool__", "__int__", "__float__", "tolist", "cpu", "numpy"}
DATA_DEPENDENT = {"nonzero", "unique", "masked_select", "argwhere", "nonzero_static"}
CREATION = {"empty", "zeros", "ones", "full", "arange", "rand", "randn", "randint", "tensor", "as_tensor",
            "empty_like", "zeros_like", "ones_like", "full_like", "rand_like", "randn_like", "linspace"}


def _tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in _tensors(item)]
    if isinstance(value, dict):
        return [t for item in value.values() for t in _tensors(item)]
    return []


def _names_a_device(args, kwargs) -> bool:
    """Whether a `.to(...)` call names a device (else it only casts)."""
    return any(isinstance(v, (torch.device, str)) for v in (*args[1:], kwargs.get("device")))


class SyncCounter(TorchFunctionMode):
    """`device`: the tensors that start on the device. `.to(<a device>)` stands for a move to the compute
    device (on a CPU run the device is "cpu" too), `.cpu()` for a read back to the host."""

    def __init__(self, device: list[torch.Tensor] = ()):
        super().__init__()
        self.on_device: dict[int, torch.Tensor] = {id(t): t for t in device}  # kept alive: ids stay valid
        self.calls: Counter = Counter()
        self.where: Counter = Counter()
        """(what, the first dist_s2s line it came from): to find a count's cause."""

    @property
    def total(self) -> int:
        return sum(self.calls.values())

    def mark(self, *tensors: torch.Tensor) -> None:
        """These live on the device from now on (what DeepSpeed moves there, say)."""
        self.on_device.update((id(t), t) for t in tensors)

    def _count(self, what: str) -> None:
        self.calls[what] += 1
        self.where[(what, self._caller())] += 1

    @staticmethod
    def _caller() -> str:
        """The first line outside torch and this file that the call came from, `path:line`."""
        frame = [f for f in traceback.extract_stack() if "/torch/" not in f.filename
                 and not f.filename.endswith("sync_counter.py")][-1]
        path = frame.filename.split("site-packages/")[-1]  # deepspeed/…, or dist_s2s/… and tests/… of the repo
        for root in ("dist_s2s/", "tests/"):
            path = root + path.split(root, 1)[1] if root in path and "deepspeed/" not in path else path
        return f"{path}:{frame.lineno}"

    def _is_device(self, tensor: torch.Tensor) -> bool:
        return id(tensor) in self.on_device

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        inputs = _tensors(args) + _tensors(kwargs)
        device_inputs = [t for t in inputs if self._is_device(t)]
        if name == "pin_memory" and device_inputs:
            raise DeviceMismatch(f"pin_memory of a device tensor ({self._caller()}): only host memory can be pinned")
        result = func(*args, **kwargs)
        if name == "to" and _names_a_device(args, kwargs):
            if not device_inputs and not kwargs.get("non_blocking", False):
                self._count("blocking host → device copy")
            return self._place(self._apart(result, args[0]), on_device=True)
        if not device_inputs:
            created_there = name in CREATION and kwargs.get("device") not in (None, "cpu")
            if created_there and name in ("tensor", "as_tensor"):
                self._count("blocking host → device copy")  # Python data copied from pageable memory
            return self._place(result, on_device=created_there) if created_there else result
        if name in READS:
            self._count(name)
            return self._place(self._apart(result, args[0]), on_device=False)
        if name in DATA_DEPENDENT:
            self._count(name)
        elif name in ("__getitem__", "__setitem__") and any(t.dtype == torch.bool for t in _tensors(args[1:])):
            self._count("boolean index")
        elif any(not self._is_device(t) and t.dim() > 0 for t in inputs):
            if name not in HOST_TENSORS_ALLOWED:
                raise DeviceMismatch(f"{name} of a host tensor and a device tensor ({self._caller()}): on a GPU, "
                                     f"'Expected all tensors to be on the same device'")
            self._count("host tensor in a device op")
        return self._place(result, on_device=True)

    @staticmethod
    def _apart(result, source):
        """A move that returned its input itself (on a CPU run `.to(cpu)` and `.cpu()` do) as a view of it, so
        that the moved tensor and the one it came from can live in different places."""
        return result.view_as(result) if result is source else result

    def _place(self, result, *, on_device: bool):
        for tensor in _tensors(result):
            if on_device:
                self.on_device[id(tensor)] = tensor
            else:
                self.on_device.pop(id(tensor), None)
        return result
