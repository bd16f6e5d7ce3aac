"""The wavefront's messages between stages, in a form NCCL can run: one 2-rank process group a direction.

NCCL ignores tags, pairs the messages between two ranks by the order they were issued, and runs a
communicator's operations on one stream in that order, a send finishing with its receive. Posting every
receive of a step first (to find the data there when an operation needs it) is then safe only if a
communicator carries one direction: the receives of stage t from stage s are posted in the order s sends
them, and nothing else waits behind them. So every ordered pair of stages that talk (act and grad_act
between neighbouring hops, hidden / grad_partial from the top stage to each shard stage, partial /
grad_hidden back) gets a process group of its own, per data replica; a stage's own messages to itself
are handed over in memory. `nccl_rules` checks the result on the ranks' logged communication, under both
ways PyTorch sets up communicators (docs/pipeline.md).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import torch
import torch.distributed as dist

from dist_s2s.parallel import comm_log
from dist_s2s.parallel.placement import Placement
from dist_s2s.parallel.wavefront.program import Message, Operation, step_program, time_chunks


def talking_pairs(placement: Placement) -> list[tuple[int, int]]:
    """Every (sender, receiver) of distinct stages that some step sends a message between, in order."""
    program = step_program(placement, time_chunks(1, 1, 1))  # one encoder and one decoder chunk: every kind
    return sorted({(m.src, m.dst) for op in program for m in op.sends if m.src != m.dst})


def direction_groups(placement: Placement, replicas: int, rank_of: Callable[[int, int], int],
                     replica: int, *, timeout: timedelta | None = None) -> dict[tuple[int, int], dist.ProcessGroup]:
    """This replica's process group for each talking pair. Every rank creates every replica's groups, in
    the same order (`new_group` is collective over the whole world), and keeps its own replica's. `timeout`:
    the set-up's (parallel.start_timeout_s); training's is set once every rank is set up."""
    mine = {}
    for data in range(replicas):
        for src, dst in talking_pairs(placement):
            group = dist.new_group([rank_of(src, data), rank_of(dst, data)], timeout=timeout)
            if data == replica:
                mine[(src, dst)] = group
    return mine


class StageMessages:
    """One stage's messages of one step: receives posted at the start, each on its direction's group, in the
    order the sender sends; sends issued as soon as an operation has its output, waited for at the end."""

    def __init__(self, stage: int, groups: dict[tuple[int, int], dist.ProcessGroup], rank_of: Callable[[int], int],
                 device: torch.device, *, timeout: timedelta | None = None):
        self.stage, self.groups, self.rank_of, self.device = stage, groups, rank_of, device
        self.timeout = timeout if device.type == "cpu" else None
        """How long a wait on gloo may last (parallel.timeout_s): its point-to-point waits have no deadline of their
        own, so a peer that hangs would hold this rank forever. On GPUs NCCL's watchdog applies the group's timeout,
        and a wait with a deadline would block the host."""
        self.local: dict[Message, torch.Tensor] = {}
        self.posted: dict[Message, tuple[torch.Tensor, object]] = {}
        self.sent: list[tuple[torch.Tensor, object]] = []
        self.clock = None
        """Set while a timeline is recorded (`clock.py`): each receive's wait is then marked before and after."""
        self.waits: list[tuple[object, object]] = []
        """The marks around each wait since the caller last emptied it."""

    def post_receives(self, program: list[Operation], shape_of: Callable[[Message], tuple[int, ...]]) -> None:
        for message in (m for op in program for m in op.sends):
            if message.dst == self.stage and message.src != self.stage:
                buffer = torch.empty(shape_of(message), dtype=torch.float32, device=self.device)
                with comm_log.labelled(_label(message)):
                    work = dist.irecv(buffer, src=self.rank_of(message.src), group=self.groups[(message.src,
                                                                                             message.dst)])
                self.posted[message] = (buffer, work)

    def send(self, message: Message, tensor: torch.Tensor) -> None:
        if message.dst == self.stage:
            self.local[message] = tensor.detach()
            return
        tensor = tensor.detach().contiguous()
        with comm_log.labelled(_label(message)):
            work = dist.isend(tensor, dst=self.rank_of(message.dst), group=self.groups[(message.src, message.dst)])
        self.sent.append((tensor, work))

    def receive(self, message: Message) -> torch.Tensor:
        if message.src == self.stage:
            return self.local.pop(message)
        buffer, work = self.posted.pop(message)
        if self.clock is None:
            self._wait(work)
            return buffer
        before = self.clock.mark()
        self._wait(work)  # on a GPU the compute stream waits, not the host: the marks are on that stream
        self.waits.append((before, self.clock.mark()))
        return buffer

    def wait_sends(self) -> None:
        for _, work in self.sent:
            self._wait(work)
        self.sent = []

    def _wait(self, work) -> None:
        if self.timeout is None:
            work.wait()
        else:
            work.wait(self.timeout)


def _label(message: Message) -> str:
    return f"{message.kind} of chunk {message.chunk}, stage {message.src} → {message.dst}"
