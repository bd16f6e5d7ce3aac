"""Replay every rank's logged communication (`comm_log.py`) under NCCL's rules: would it run on GPUs?

The rules, as NCCL and PyTorch's ProcessGroupNCCL apply them:
- tags are ignored: a send meets the receive its peer issued on the same communicator, in order;
- each communicator runs its operations on one stream, in the order this rank issued them: an operation
  starts once every earlier one on that communicator has finished;
- a send and its receive complete together (NCCL may finish a small send early; nothing may rely on it);
- a collective completes when every member of its group has it first on that communicator, with the same
  kind, element count, dtype and root (a member with a message first gets to it once the message completes);
- an operation issued after a wait depends on what was waited for (on a GPU the wait holds the compute
  stream, and the next operation's stream waits for the compute stream);
- a device-wide synchronize (`torch.cuda.synchronize`, logged by `device.synchronize`) holds the host until
  every operation the rank has issued has completed, posted receives included.

Which communicator an operation runs on depends on how the group was set up. `pair`: PyTorch's lazy
default, a 2-rank communicator per pair of ranks for point-to-point messages (both directions share it),
the group's own for collectives. `group`: a group initialized eagerly (`init_process_group(device_id=...)`)
runs its point-to-point messages on the group's communicator too. A schedule must pass under both.

A deadlock (no rank can move) or a mismatch (a send met by a receive of another size or dtype, two
different collectives) fails, naming each stuck rank's operation; so does a tensor that is not on its
rank's device.

    python -m dist_s2s.parallel.nccl_rules DIR [--communicators pair|group]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

COMMUNICATOR_MODELS = ("pair", "group")


@dataclass
class Operation:
    rank: int
    index: int
    """Its position among this rank's issued operations."""
    record: dict
    communicator: tuple
    parts: list[dict] = field(default_factory=list)
    """Point-to-point parts still unmatched: one for a send or receive, several for a batch."""
    done: bool = False

    def describe(self) -> str:
        r = self.record
        what = r["kind"] if r["kind"] != "batch" else "batch of " + ", ".join(
            f"{p['kind']} {'to' if p['kind'] == 'send' else 'from'} {p['peer']}" for p in r["ops"])
        if r["kind"] in ("send", "recv"):
            what += f" {'to' if r['kind'] == 'send' else 'from'} rank {r['peer']}"
        label = f" [{r['label']}]" if r.get("label") else ""
        return f"rank {self.rank} op #{self.index}: {what}, {r['numel']} × {r['dtype']} on group {r['group']}{label}"


@dataclass
class Verdict:
    ok: bool
    completed: int
    total: int
    problems: list[str]

    def __str__(self) -> str:
        if self.ok:
            return f"NCCL rules: all {self.total} operations complete"
        return (f"NCCL rules: stuck after {self.completed} of {self.total} operations:\n  "
                + "\n  ".join(self.problems))


def load(directory: Path) -> dict[int, dict]:
    """rank → {"device": ..., "events": [...]}, from DIR/comm-<rank>.jsonl."""
    ranks = {}
    for path in sorted(Path(directory).glob("comm-*.jsonl")):
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        header, events = lines[0], lines[1:]
        ranks[header["rank"]] = {"device": header["device"], "events": events}
    if not ranks:
        raise FileNotFoundError(f"{directory}: no comm-<rank>.jsonl logs (was DIST_S2S_COMM_LOG set?)")
    return ranks


def _communicator(rank: int, record: dict, model: str) -> tuple:
    group = record["group"]
    if model == "group" or record["kind"] not in ("send", "recv", "batch"):
        return (group,)
    peers = {record["peer"]} if record["kind"] != "batch" else {op["peer"] for op in record["ops"]}
    if len(peers) > 1:  # a batch to several peers runs on the group's communicator
        return (group,)
    peer = peers.pop()
    return (group, min(rank, peer), max(rank, peer))


def replay(ranks: dict[int, dict], model: str = "pair") -> Verdict:
    """Run every rank's log under the rules (module docstring) with communicators set up as `model`."""
    if model not in COMMUNICATOR_MODELS:
        raise ValueError(f"unknown communicator model {model!r} ({', '.join(COMMUNICATOR_MODELS)})")
    problems = _device_problems(ranks)
    cursor = {rank: 0 for rank in ranks}
    issued: dict[tuple[int, int], Operation] = {}
    queues: dict[tuple, dict[int, deque]] = {}
    counts = {rank: 0 for rank in ranks}
    total = sum(1 for r in ranks.values() for e in r["events"] if e["event"] == "issue")
    completed = 0
    while True:
        moved = False
        for rank, log in ranks.items():  # each host runs ahead until it waits on an unfinished operation
            events = log["events"]
            while cursor[rank] < len(events):
                event = events[cursor[rank]]
                if event["event"] == "wait":
                    if not issued[(rank, event["handle"])].done:
                        break
                elif event["event"] == "synchronize":
                    if not all(op.done for (owner, _), op in issued.items() if owner == rank):
                        break
                else:
                    op = Operation(rank, counts[rank], event, _communicator(rank, event, model))
                    op.parts = ([{"kind": event["kind"], "peer": event["peer"], "numel": event["numel"],
                                  "dtype": event["dtype"]}] if event["kind"] in ("send", "recv")
                                else [dict(p) for p in event.get("ops", [])])
                    counts[rank] += 1
                    issued[(rank, event["handle"])] = op
                    queues.setdefault(op.communicator, {}).setdefault(rank, deque()).append(op)
                cursor[rank] += 1
                moved = True
        finished, mismatch = _complete_heads(queues)
        completed += finished
        if mismatch:
            return Verdict(False, completed, total, problems + mismatch)
        if not finished and not moved:
            break
    stuck = [op for per_rank in queues.values() for queue in per_rank.values() for op in queue]
    waiting = [rank for rank, log in ranks.items() if cursor[rank] < len(log["events"])]
    if not stuck and not waiting:
        return Verdict(not problems, completed, total, problems)
    for rank in sorted(ranks):
        heads = sorted((q[0] for per_rank in queues.values() for r, q in per_rank.items() if r == rank and q),
                       key=lambda op: op.index)
        waited = None
        if rank in waiting:
            event = ranks[rank]["events"][cursor[rank]]
            if event["event"] == "synchronize":
                problems.append(f"rank {rank} synchronizes its device (waits for every operation it has issued)")
            else:
                waited = issued[(rank, event["handle"])]
                problems.append(f"waits on {waited.describe()}")
        problems += [f"  first on its communicator: {op.describe()}" for op in heads if op is not waited]
    return Verdict(False, completed, total, problems)


def _complete_heads(queues: dict[tuple, dict[int, deque]]) -> tuple[int, list[str]]:
    """Complete every operation that its communicator's turn allows; (how many, mismatches)."""
    finished = 0
    for per_rank in queues.values():
        progress = True
        while progress:
            progress = False
            heads = {rank: queue[0] for rank, queue in per_rank.items() if queue}
            for op in heads.values():
                if op.record["kind"] in ("send", "recv", "batch"):
                    mismatch = _match_point_to_point(op, heads)
                else:
                    mismatch = _match_collective(op, heads)
                if mismatch:
                    return finished, [mismatch]
            for rank, op in heads.items():
                if op.done:
                    per_rank[rank].popleft()
                    finished += 1
                    progress = True
    return finished, []


def _match_point_to_point(op: Operation, heads: dict[int, Operation]) -> str | None:
    for part in list(op.parts):
        if part["kind"] != "send":
            continue  # each pairing is made once, from the sending side
        peer = heads.get(part["peer"])
        if peer is None or peer.record["kind"] not in ("send", "recv", "batch"):
            continue
        receive = next((p for p in peer.parts if p["kind"] == "recv" and p["peer"] == op.rank), None)
        if receive is None:
            continue
        if (receive["numel"], receive["dtype"]) != (part["numel"], part["dtype"]):
            return (f"size mismatch: {op.describe()} meets {peer.describe()} "
                    f"({part['numel']} × {part['dtype']} sent, {receive['numel']} × {receive['dtype']} received)")
        op.parts.remove(part)
        peer.parts.remove(receive)
        peer.done = not peer.parts
    op.done = not op.parts
    return None


def _match_collective(op: Operation, heads: dict[int, Operation]) -> str | None:
    """Completes once every member has it first; a member whose first operation is a message gets to the
    collective when the message completes (or the replay ends stuck); another collective first is a mismatch."""
    members = op.record["group_ranks"]
    if not all(rank in heads for rank in members):
        return None
    if any(heads[rank].record["kind"] in ("send", "recv", "batch") for rank in members):
        return None
    signature = lambda o: (o.record["kind"], o.record["numel"], o.record["dtype"], o.record.get("root"))  # noqa: E731
    for rank in members:
        other = heads[rank]
        if signature(other) != signature(op):
            return f"collective mismatch: {op.describe()} meets {other.describe()}"
    for rank in members:
        heads[rank].done = True
    return None


def _device_problems(ranks: dict[int, dict]) -> list[str]:
    problems = []
    for rank, log in sorted(ranks.items()):
        for event in log["events"]:
            if event["event"] == "issue" and any(d != log["device"] for d in event["devices"]):
                problems.append(f"rank {rank}: {event['kind']} of a tensor on {event['devices']}, not on the rank's "
                                f"device {log['device']} [{event.get('label', '')}]")
                break
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory", type=Path)
    parser.add_argument("--communicators", choices=COMMUNICATOR_MODELS, nargs="+", default=list(COMMUNICATOR_MODELS))
    args = parser.parse_args(argv)
    ranks = load(args.directory)
    verdicts = {model: replay(ranks, model) for model in args.communicators}
    for model, verdict in verdicts.items():
        print(f"{model} communicators: {verdict}")
    return 0 if all(v.ok for v in verdicts.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
