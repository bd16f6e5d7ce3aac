"""The paper's pipeline (§3.5) as a DeepSpeed `PipeSchedule`: a wavefront over time, the batch kept whole.

"Each layer of the LSTM was executed on a different GPU and communicated its activations to the
next GPU / layer as soon as they were computed." The source and target are cut into time chunks
of `parallel.chunk_steps` steps; while the stage of layer k works on chunk j, the stage of layer
k + 1 works on chunk j - 1. Each stage carries its layers' (h, c) from chunk to chunk, and the
encoder's final state of layer k starts decoder layer k (§3.2), each sentence at its own length.

One step is a fixed program of operations, the same pure function of (placement, batch shape) on
every rank, so every rank knows every message's shape without asking:

    F(g, h)  forward of chunk g (encoder chunks first, then decoder chunks) through hop h, the
             layers one stage holds; sends its output to the next hop
    P(d, s)  stage s folds its softmax shards over decoder chunk d's top-layer states
             (partial max / sum-exp / target logit, `SoftmaxShard`'s online log-sum-exp)
    L(d)     the top stage combines the partials into the loss of chunk d and sends each shard
             stage the gradient of its partials: the softmax needs no recurrence, so its forward
             and backward run inside the LSTM's forward sweep
    Q(d, s)  stage s back-propagates through its shards to d hidden, sent back (the weights wait for
             W); on a stage below the top one chunk late, after its P(d + 1), so that it computes the
             next chunk instead of waiting for the top stage's L(d): d hidden is needed only in the
             backward sweep
    B(g, h)  backward of chunk g through hop h, in reverse time, carrying d(h, c) back: the
             gradient of full backpropagation through time, never truncated
    W(d, s)  stage s's softmax weight gradients, deferred from Q to where the stage would wait in the
             forward sweep: below the top just before its P(d + 2) (for the top stage's hidden states),
             on the top stage just before its L(d + 1) (for the partials of the stages below); the last
             ones after the stage's last Q
    E(g)     the embedding gradients of one side (g: its first chunk), deferred from every B at the
             bottom hop: one dense embedding backward a side instead of one a chunk

The global order below is a topological order of these operations; each rank runs its own
subsequence of it, sends without waiting and receives what it has posted in the senders' order, one
process group a direction (`messages.py`: what NCCL needs), so no rank can wait on an
operation that waits on it. The softmax of chunk d is placed one chunk
behind the LSTM, right after the bottom stage's F(d + 1): the shard stages then work on chunk d while
the layers above the bottom one catch up with chunk d + 1 (docs/benchmarks.md compares the placements).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from deepspeed.runtime.pipe.schedule import OptimizerStep, PipeInstruction, PipeSchedule, ReduceGrads

from dist_s2s.parallel.placement import Placement


@dataclass(frozen=True)
class TimeChunk:
    """Time steps [start, stop) of the source (encoder) or the target (decoder) of a batch."""

    index: int
    """Position in the step's sequence of chunks: encoder chunks 0 … E-1, then decoder chunks."""
    decoder: bool
    start: int
    stop: int

    @property
    def width(self) -> int:
        return self.stop - self.start


def time_chunks(src_width: int, tgt_width: int, chunk_steps: int, *, src_ends=()) -> list[TimeChunk]:
    """The encoder's chunks over the source width, then the decoder's over the target width, each at most
    `chunk_steps` wide. The encoder is also cut where a sentence ends (`src_ends`: the source lengths), so
    that within a chunk every sentence runs all of it or none: one fused LSTM call a chunk, where a
    chunk in which sentences end would take one call per distinct end."""
    ends = sorted(set(src_ends))
    chunks: list[TimeChunk] = []
    for decoder, width in ((False, src_width), (True, tgt_width)):
        start = 0
        while start < width:
            stop = min(start + chunk_steps, width)
            if not decoder:
                stop = min([stop, *(end for end in ends if end > start)])
            chunks.append(TimeChunk(len(chunks), decoder, start, stop))
            start = stop
    return chunks


def batch_chunks(batch, chunk_steps: int) -> list[TimeChunk]:
    """`time_chunks` of a batch, cut at its sentences' ends (host lengths: every rank computes the same)."""
    return time_chunks(batch.src.shape[1], batch.tgt_out.shape[1], chunk_steps, src_ends=batch.src_lengths.tolist())


@dataclass(frozen=True)
class Message:
    """One tensor sent from a stage to a stage (possibly the same: then it is handed over in-process)."""

    kind: str
    """act (hop output), hidden (top-layer states of real target positions), partial (3 × N),
    and their gradients grad_act, grad_hidden, grad_partial."""
    chunk: int
    src: int
    dst: int
    hop: int = -1


@dataclass
class Operation:
    kind: str
    """F, P, L, Q or B (module docstring)."""
    stage: int
    chunk: TimeChunk
    hop: int = -1
    receives: list[Message] = field(default_factory=list)
    sends: list[Message] = field(default_factory=list)


def step_program(placement: Placement, chunks: list[TimeChunk], *, backward: bool = True) -> list[Operation]:
    """Every operation of one step, in a global topological order (module docstring)."""
    hops = placement.hops
    top = placement.top_stage
    shard_stages = placement.shard_stages
    program: list[Operation] = []

    def act(chunk: TimeChunk, hop: int) -> Message:
        return Message("act", chunk.index, hops[hop][0], hops[hop + 1][0], hop)

    lagging: list[Operation] = []
    """Q operations of stages below the top, emitted one chunk late (module docstring)."""

    def softmax(chunk: TimeChunk) -> None:
        hidden = [Message("hidden", chunk.index, top, stage) for stage in shard_stages]
        partials = [Message("partial", chunk.index, stage, top) for stage in shard_stages]
        program.extend(Operation("P", stage, chunk, receives=[hidden[i]], sends=[partials[i]])
                       for i, stage in enumerate(shard_stages))
        program.extend(lagging)
        lagging.clear()
        if not backward:
            program.append(Operation("L", top, chunk, receives=partials))
            return
        grads = [Message("grad_partial", chunk.index, top, stage) for stage in shard_stages]
        program.append(Operation("L", top, chunk, receives=partials, sends=grads))
        for i, stage in enumerate(shard_stages):
            back = Message("grad_hidden", chunk.index, stage, top)
            q = Operation("Q", stage, chunk, receives=[grads[i]], sends=[back])
            (program if stage == top else lagging).append(q)

    pending = None
    for chunk in chunks:
        for hop, (stage, _) in enumerate(hops):
            receives = [act(chunk, hop - 1)] if hop > 0 else []
            sends = [act(chunk, hop)] if hop < len(hops) - 1 else []
            if hop == len(hops) - 1 and chunk.decoder:
                sends = [Message("hidden", chunk.index, top, stage) for stage in shard_stages]
            program.append(Operation("F", stage, chunk, hop, receives, sends))
            if hop == 0 and pending is not None:
                softmax(pending)
        pending = chunk if chunk.decoder else None
    softmax(pending)  # the last decoder chunk's
    program.extend(lagging)
    if not backward:
        return program
    for chunk in reversed(chunks):
        for hop in reversed(range(len(hops))):
            stage = hops[hop][0]
            receives = [Message("grad_act", chunk.index, hops[hop + 1][0], stage, hop)] if hop < len(hops) - 1 else []
            if hop == len(hops) - 1 and chunk.decoder:
                receives = [Message("grad_hidden", chunk.index, s, top) for s in shard_stages]
            sends = [Message("grad_act", chunk.index, stage, hops[hop - 1][0], hop - 1)] if hop > 0 else []
            program.append(Operation("B", stage, chunk, hop, receives, sends))
    return with_deferred_gradients(program, placement, chunks)


def with_deferred_gradients(program: list[Operation], placement: Placement, chunks: list[TimeChunk]) -> list[Operation]:
    """The training program with its W and E operations (module docstring) inserted. They send nothing, so
    where they go changes only when each stage computes them."""
    top, bottom = placement.top_stage, placement.hops[0][0]
    first_chunks = [next(c for c in chunks if c.decoder == side) for side in (False, True)]
    after: dict[int, list[Operation]] = {}
    for stage in placement.shard_stages:
        # Where the stage waits in the forward sweep: a stage below the top for the top stage's hidden
        # states (its P(d + 2)), the top stage for the partials of the stages below (its L(d + 1)).
        waits, lead = ("L", 1) if stage == top else ("P", 2)
        wait_at = {op.chunk.index: i for i, op in enumerate(program) if op.kind == waits and op.stage == stage}
        last_q = max(i for i, op in enumerate(program) if op.kind == "Q" and op.stage == stage)
        for op in program:
            if op.kind == "Q" and op.stage == stage:
                index = wait_at.get(op.chunk.index + lead, last_q + 1) - 1
                after.setdefault(index, []).append(Operation("W", stage, op.chunk))
    for chunk in first_chunks:
        index = next(i for i, op in enumerate(program) if op.kind == "B" and op.hop == 0 and op.chunk == chunk)
        after.setdefault(index, []).append(Operation("E", bottom, chunk))
    placed = []
    for index, op in enumerate(program):
        placed += [op, *after.get(index, [])]
    return placed


class RunOperation(PipeInstruction):
    """One operation of the step program (`op`), executed by `WavefrontEngine`."""


class PostReceives(PipeInstruction):
    """Post every receive of the step at once, each on its direction's group, in the order the senders send."""


class WaitSends(PipeInstruction):
    """Wait until every tensor this stage sent has left (buffers may then be reused)."""


class WavefrontSchedule(PipeSchedule):
    """This stage's subsequence of the step program, then DeepSpeed's gradient reduction and
    optimizer step (training) or nothing more (evaluation)."""

    def __init__(self, program: list[Operation], stages: int, stage_id: int, *, train: bool, replicas: int):
        super().__init__(micro_batches=1, stages=stages, stage_id=stage_id)
        self.program, self.train, self.replicas = program, train, replicas

    def steps(self):
        yield [PostReceives()]
        for op in self.program:
            if op.stage == self.stage_id:
                yield [RunOperation(op=op)]
        yield [WaitSends()]
        if self.train:  # one replica has nothing to reduce (DeepSpeed would still copy every gradient)
            yield [ReduceGrads(), OptimizerStep()] if self.replicas > 1 else [OptimizerStep()]

    def num_pipe_buffers(self) -> int:
        return 1
