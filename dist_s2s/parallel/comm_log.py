"""A log of every message and collective this process issues, for checking them against NCCL's rules.

gloo forgives what NCCL does not: it pairs a send with a receive by tag, and it runs each pair of ranks'
messages on background threads in whatever order they become possible. NCCL ignores tags and runs a
communicator's operations one after the other, in the order they were issued. A schedule that works on
gloo can therefore hang on GPUs. With `DIST_S2S_COMM_LOG=DIR` set, `record(DIR)` (called by
`process_group.join_process_group` before the group forms) wraps `torch.distributed`'s communication
functions, DeepSpeed's included (it calls them by attribute), and writes `DIR/comm-<rank>.jsonl` at exit:
one line per operation issued (kind, peer, process group and its ranks, element count, dtype, device),
per wait on its handle, and per wait for the whole device (`device.synchronize`, logged on a CPU run too).
`nccl_rules.replay` then runs the ranks' logs under NCCL's rules.

    DIST_S2S_COMM_LOG=/tmp/comms torchrun --nproc_per_node 2 -m dist_s2s train --config configs/tiny.yaml \
        --parallel.stages=2
    python -m dist_s2s.parallel.nccl_rules /tmp/comms
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import inspect
import itertools
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed import distributed_c10d as c10d

from dist_s2s.device import observe_synchronizes

ENV = "DIST_S2S_COMM_LOG"

POINT_TO_POINT = ("send", "recv", "isend", "irecv")
COLLECTIVES = ("all_reduce", "broadcast", "reduce", "all_gather", "all_gather_into_tensor", "reduce_scatter",
               "reduce_scatter_tensor", "gather", "scatter", "barrier", "all_to_all", "all_to_all_single",
               "all_reduce_coalesced", "_all_gather_base", "_reduce_scatter_base", "monitored_barrier")
"""The leaf collectives: the object collectives (`gather_object`, ...) call these, and are logged through them."""
BLOCKING = ("send", "recv")


class CommLog:
    """This process's operations in issue order (`events`), written to `path` by `write`."""

    def __init__(self, path: Path, device: str):
        self.path, self.device = path, device
        self.events: list[dict] = []
        self.handles = itertools.count()
        self.inside = 0
        """Depth of logged calls under way: what a logged function calls itself is not logged again."""
        self.label = ""
        """What the caller says the next operations carry (`labelled`), kept with each of them."""

    def issue(self, kind: str, *, group, peer: int | None, tensors: list[torch.Tensor], **extra) -> int:
        handle = next(self.handles)
        group = group if group is not None else c10d._get_default_group()
        self.events.append({
            "event": "issue", "handle": handle, "kind": kind, "peer": peer,
            "group": c10d._get_process_group_name(group), "group_ranks": dist.get_process_group_ranks(group),
            "numel": sum(t.numel() for t in tensors), "dtype": str(tensors[0].dtype) if tensors else None,
            "devices": sorted({str(t.device) for t in tensors}), "label": self.label, **extra,
        })
        return handle

    def wait(self, handle: int) -> None:
        self.events.append({"event": "wait", "handle": handle})

    def synchronize(self, device: torch.device) -> None:
        """The host waited for the whole device (`device.synchronize`): for every operation issued so far."""
        self.events.append({"event": "synchronize", "device": str(device)})

    def write(self) -> None:
        if not self.events:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        header = {"event": "rank", "rank": dist.get_rank() if dist.is_initialized() else int(os.environ["RANK"]),
                  "device": self.device}
        self.path.write_text("\n".join(json.dumps(e) for e in [header, *self.events]) + "\n")


_log: CommLog | None = None


def active() -> CommLog | None:
    return _log


@contextlib.contextmanager
def labelled(text: str):
    """Attach `text` (what a message carries: its kind and chunk) to the operations issued inside."""
    if _log is None:
        yield
        return
    before, _log.label = _log.label, text
    try:
        yield
    finally:
        _log.label = before


class _LoggedWork:
    """A communication handle whose `wait` is logged; everything else is the wrapped handle's."""

    def __init__(self, work, handle: int):
        self._work, self._handle = work, handle

    def wait(self, *args, **kwargs):
        if _log is not None:
            _log.wait(self._handle)
        return self._work.wait(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._work, name)


def _tensors_of(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in _tensors_of(item)]
    return []


def _arguments(original, args, kwargs) -> dict:
    bound = inspect.signature(original).bind(*args, **kwargs)
    bound.apply_defaults()
    return bound.arguments


def _call(original, args, kwargs):
    _log.inside += 1
    try:
        return original(*args, **kwargs)
    finally:
        _log.inside -= 1


def _wrap_point_to_point(name: str, original):
    sending = name in ("send", "isend")

    @functools.wraps(original)
    def logged(*args, **kwargs):
        if _log is None or _log.inside:
            return original(*args, **kwargs)
        given = _arguments(original, args, kwargs)
        group = given["group"] if given["group"] is not None else c10d._get_default_group()
        peer = given["dst" if sending else "src"]
        group_peer = given["group_dst" if sending else "group_src"]
        if peer is None and group_peer is not None:
            peer = c10d.get_global_rank(group, group_peer)
        handle = _log.issue("send" if sending else "recv", group=group, peer=peer, tensors=[given["tensor"]],
                            tag=given["tag"])
        work = _call(original, args, kwargs)
        if name in BLOCKING:
            _log.wait(handle)
            return work
        return _LoggedWork(work, handle) if work is not None else work

    return logged


def _wrap_collective(name: str, original):
    @functools.wraps(original)
    def logged(*args, **kwargs):
        if _log is None or _log.inside:
            return original(*args, **kwargs)
        given = _arguments(original, args, kwargs)
        # Each member's own contribution: the root of a gather or scatter also passes everyone's buffers.
        mine = next((key for key in ("tensor", "input_tensor", "input") if isinstance(given.get(key), torch.Tensor)),
                    None)
        tensors = [given[mine]] if mine else _tensors_of([value for key, value in given.items() if key != "group"])
        root = next((given[key] for key in ("src", "dst", "group_src", "group_dst") if given.get(key) is not None),
                    None)
        handle = _log.issue(name.lstrip("_"), group=given.get("group"), peer=None, tensors=tensors, root=root)
        work = _call(original, args, kwargs)
        if given.get("async_op") and work is not None:
            return _LoggedWork(work, handle)
        _log.wait(handle)
        return work

    return logged


def _wrap_batch(original):
    @functools.wraps(original)
    def logged(p2p_op_list):
        if _log is None or _log.inside:
            return original(p2p_op_list)
        ops = [{"kind": "send" if getattr(op.op, "__name__", "") == "isend" else "recv", "peer": op.peer,
                "numel": op.tensor.numel(), "dtype": str(op.tensor.dtype)} for op in p2p_op_list]
        handle = _log.issue("batch", group=p2p_op_list[0].group, peer=None,
                            tensors=[op.tensor for op in p2p_op_list], ops=ops)
        works = _call(original, (p2p_op_list,), {})
        return [_LoggedWork(work, handle) for work in works]

    return logged


def _patch(name: str, wrapper) -> None:
    original = getattr(c10d, name)
    logged = wrapper(name, original) if wrapper is not _wrap_batch else wrapper(original)
    setattr(c10d, name, logged)
    if getattr(dist, name, None) is original:
        setattr(dist, name, logged)


def record(directory: str | Path, device: str) -> CommLog:
    """Log this process's communication into `directory` (written at exit); `device` is where its tensors
    belong (`cuda:<local rank>` on GPUs)."""
    global _log
    if _log is not None:
        return _log
    _log = CommLog(Path(directory) / f"comm-{os.environ.get('RANK', '0')}.jsonl", device)
    for name in POINT_TO_POINT:
        _patch(name, _wrap_point_to_point)
    for name in COLLECTIVES:
        _patch(name, _wrap_collective)
    _patch("batch_isend_irecv", _wrap_batch)
    observe_synchronizes(_log.synchronize)
    atexit.register(_log.write)
    return _log


def record_if_asked(device: str) -> None:
    """`record` into $DIST_S2S_COMM_LOG when it is set."""
    if os.environ.get(ENV):
        record(os.environ[ENV], device)
