"""The NCCL-rules replay (`parallel/nccl_rules.py`) on hand-written logs: what it accepts and what it rejects.

The real runs' logs are replayed in test_pipeline.py and test_pipeline_training.py."""

from __future__ import annotations

import pytest

from dist_s2s.parallel.nccl_rules import replay

WORLD = "0"


class Log:
    """One rank's communication, written as it would be logged."""

    def __init__(self, rank: int, device: str = "cpu"):
        self.rank, self.device, self.events, self.handles = rank, device, [], 0

    def issue(self, kind: str, peer: int | None = None, numel: int = 4, group: str = WORLD, ranks=(0, 1),
              dtype: str = "torch.float32", device: str | None = None, **extra) -> int:
        self.handles += 1
        self.events.append({"event": "issue", "handle": self.handles, "kind": kind, "peer": peer, "group": group,
                            "group_ranks": list(ranks), "numel": numel, "dtype": dtype,
                            "devices": [device or self.device], "label": "", **extra})
        return self.handles

    def wait(self, handle: int) -> None:
        self.events.append({"event": "wait", "handle": handle})

    def blocking(self, kind: str, peer: int | None = None, **kwargs) -> None:
        self.wait(self.issue(kind, peer, **kwargs))


def ranks_of(*logs: Log) -> dict[int, dict]:
    return {log.rank: {"device": log.device, "events": log.events} for log in logs}


@pytest.mark.parametrize("model", ["pair", "group"])
def test_receives_posted_before_the_sends_on_one_communicator_deadlock(model):
    """Each rank posts its receive first, then sends: gloo pairs them by tag, NCCL runs the receive first."""
    a, b = Log(0), Log(1)
    for me, other in ((a, 1), (b, 0)):
        receive = me.issue("recv", other)
        send = me.issue("send", other)
        me.wait(receive)
        me.wait(send)
    verdict = replay(ranks_of(a, b), model)
    assert not verdict.ok and verdict.completed == 0
    assert "waits on rank 0 op #0: recv from rank 1" in str(verdict)
    assert "waits on rank 1 op #0: recv from rank 0" in str(verdict)


def test_the_same_exchange_on_one_group_a_direction_completes():
    a, b = Log(0), Log(1)
    for me, other, inbound, outbound in ((a, 1, "1to0", "0to1"), (b, 0, "0to1", "1to0")):
        receive = me.issue("recv", other, group=inbound)
        send = me.issue("send", other, group=outbound)
        me.wait(receive)
        me.wait(send)
    for model in ("pair", "group"):
        verdict = replay(ranks_of(a, b), model)
        assert verdict.ok and verdict.completed == 4, str(verdict)


def test_tags_do_not_pair_messages_order_does():
    """Rank 0 sends x then y; rank 1 receives y (tag 2) first: sizes differ, so NCCL would mis-deliver."""
    a, b = Log(0), Log(1)
    a.wait(a.issue("send", 1, numel=8, tag=1))
    a.wait(a.issue("send", 1, numel=2, tag=2))
    b.wait(b.issue("recv", 0, numel=2, tag=2))
    b.wait(b.issue("recv", 0, numel=8, tag=1))
    verdict = replay(ranks_of(a, b))
    assert not verdict.ok and "size mismatch" in str(verdict) and "8 × torch.float32 sent" in str(verdict)


def test_on_a_groups_own_communicator_a_rank_meets_all_its_peers_in_issue_order():
    """Rank 0 sends to 1, then receives from 2; rank 2 sends to 0, then to 1; rank 1 receives from 2, then
    from 0. On 2-rank communicators each conversation goes its own way; on the group's one communicator
    every rank's first operation waits for a peer whose first operation is another."""
    ranks = (0, 1, 2)
    zero, one, two = Log(0), Log(1), Log(2)
    zero.blocking("send", 1, ranks=ranks)
    zero.blocking("recv", 2, ranks=ranks)
    sends = [two.issue("send", 0, ranks=ranks), two.issue("send", 1, ranks=ranks)]
    for handle in sends:
        two.wait(handle)
    one.blocking("recv", 2, ranks=ranks)
    one.blocking("recv", 0, ranks=ranks)
    assert replay(ranks_of(zero, one, two), "pair").ok
    verdict = replay(ranks_of(zero, one, two), "group")
    assert not verdict.ok and verdict.completed == 0, str(verdict)


def test_a_collective_needs_every_member_and_the_same_collective():
    a, b = Log(0), Log(1)
    a.blocking("all_reduce")
    assert not replay(ranks_of(a, b)).ok, "rank 1 never joins"
    b.blocking("all_reduce")
    assert replay(ranks_of(a, b)).ok
    a.blocking("all_reduce", numel=4)
    b.blocking("broadcast", numel=4, root=0)
    verdict = replay(ranks_of(a, b))
    assert not verdict.ok and "collective mismatch" in str(verdict)


@pytest.mark.parametrize("model", ["pair", "group"])
def test_a_collective_waits_for_a_members_earlier_message_on_its_communicator(model):
    """DeepSpeed's pipeline engine opens with a message along the stages (0 → 1 → 2); rank 0, done first,
    enters a barrier while rank 1's send to rank 2 is still ahead of it: the barrier waits, nothing is
    mismatched. With rank 0's send issued only after the barrier, rank 1 never gets there: stuck."""
    ranks = (0, 1, 2)
    zero, one, two = Log(0), Log(1), Log(2)
    zero.blocking("send", 1, ranks=ranks)
    one.blocking("recv", 0, ranks=ranks)
    one.blocking("send", 2, ranks=ranks)
    two.blocking("recv", 1, ranks=ranks)
    for log in (zero, one, two):
        log.blocking("barrier", ranks=ranks, numel=0, dtype=None)
    assert replay(ranks_of(zero, one, two), model).ok
    late = Log(0)
    late.blocking("barrier", ranks=ranks, numel=0, dtype=None)
    late.blocking("send", 1, ranks=ranks)
    verdict = replay(ranks_of(late, one, two), model)
    assert not verdict.ok and "waits on rank 0 op #0: barrier" in str(verdict), str(verdict)
    assert "mismatch" not in str(verdict)


def test_an_operation_issued_after_a_wait_depends_on_it():
    """Rank 1 waits for rank 0's message before it sends its own; rank 0 waits for that reply before it
    sends: each waits on the other."""
    a, b = Log(0), Log(1)
    a.wait(a.issue("recv", 1, group="1to0"))
    a.wait(a.issue("send", 1, group="0to1"))
    b.wait(b.issue("recv", 0, group="0to1"))
    b.wait(b.issue("send", 0, group="1to0"))
    assert not replay(ranks_of(a, b)).ok


def test_a_tensor_off_the_ranks_device_is_reported():
    a, b = Log(0, device="cuda:0"), Log(1, device="cuda:1")
    a.blocking("all_reduce", device="cpu", ranks=(0, 1))
    b.blocking("all_reduce", ranks=(0, 1))
    verdict = replay(ranks_of(a, b))
    assert not verdict.ok and "not on the rank's device cuda:0" in str(verdict)


def test_a_batch_of_sends_and_receives_completes_as_one():
    a, b = Log(0), Log(1)
    ops = lambda peer: [{"kind": "send", "peer": peer, "numel": 4, "dtype": "torch.float32"},  # noqa: E731
                        {"kind": "recv", "peer": peer, "numel": 4, "dtype": "torch.float32"}]
    a.blocking("batch", ops=ops(1), numel=8)
    b.blocking("batch", ops=ops(0), numel=8)
    assert replay(ranks_of(a, b)).ok


def test_a_device_synchronize_waits_for_every_operation_the_rank_has_issued():
    """The wavefront's timeline once synchronized the GPU around each instruction: the step's first posts every
    receive, gradients from the next stage among them, which that stage sends only after the activations this
    rank has yet to send. A synchronize waits for those receives: a deadlock."""
    for synchronizes in (True, False):
        a, b = Log(0), Log(1)
        gradient = a.issue("recv", 1, group="1to0")  # posted at the step's start
        if synchronizes:
            a.events.append({"event": "synchronize", "device": "cuda:0"})
        a.blocking("send", 1, group="0to1")  # the activations
        a.wait(gradient)
        b.blocking("recv", 0, group="0to1")
        b.blocking("send", 0, group="1to0")
        verdict = replay(ranks_of(a, b))
        assert verdict.ok is not synchronizes, str(verdict)
    assert "rank 0 synchronizes its device" in str(verdict := replay(ranks_of(*_synchronized_pair())))
    assert verdict.completed == 0


def _synchronized_pair() -> tuple[Log, Log]:
    a, b = Log(0), Log(1)
    a.issue("recv", 1, group="1to0")
    a.events.append({"event": "synchronize", "device": "cuda:0"})
    a.blocking("send", 1, group="0to1")
    b.blocking("recv", 0, group="0to1")
    return a, b


def test_a_synchronize_after_every_message_completed_passes():
    a, b = Log(0), Log(1)
    a.blocking("send", 1, group="0to1")
    a.events.append({"event": "synchronize", "device": "cuda:0"})
    b.blocking("recv", 0, group="0to1")
    assert replay(ranks_of(a, b)).ok
