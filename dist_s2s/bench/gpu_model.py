"""A GPU cost model of the paper's model: a projection, not a measurement.

Each operation's time is max(FLOPs ÷ achievable rate, bytes ÷ memory bandwidth) plus a launch
latency per kernel; an LSTM layer's recurrence costs that once per time step (its steps cannot
run in parallel), its input projection once per chunk. Messages cost latency + bytes ÷ link
bandwidth. The same operations feed the wavefront simulator (`wavefront_sim.simulate_program`, on
the real step program) and the 1F1B simulator (`one_f_one_b_sim.simulate`), and their sum is one GPU.
Every constant is in `GpuConstants` with where it comes from; docs/benchmarks.md has the table.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from dist_s2s.bench.one_f_one_b_sim import StageCosts, simulate
from dist_s2s.bench.wavefront_sim import ProgramCosts, simulate_program
from dist_s2s.parallel.placement import Placement, placement
from dist_s2s.parallel.wavefront.program import Message, Operation, TimeChunk, step_program, time_chunks


@dataclass(frozen=True)
class GpuConstants:
    """H100 SXM, fp32 (the paper's precision)."""

    gemm_flops: float = 0.8 * 67e12
    """Large fp32 GEMMs (the softmax slices, the LSTM input projections): 80% of the 67 TFLOP/s fp32
    peak of the H100 SXM datasheet (cuBLAS reaches 70–90% on shapes this large)."""
    lstm_flops: float = 0.53 * 67e12
    """One recurrent step's GEMMs at hidden 1000, batch 128: DeepBench's cuDNN LSTM at hidden 1024,
    batch 128 ran at 53% of a V100's fp32 peak (8.3 of 15.7 TFLOP/s); the same share of the H100's."""
    memory_bytes: float = 3.35e12
    """HBM3 bandwidth, H100 SXM datasheet (an H200 has 4.8e12)."""
    link_bytes: float = 450e9
    """NVLink 4: 900 GB/s per GPU both ways (datasheet), 450 GB/s one way."""
    launch_s: float = 5e-6
    """Per kernel launch (the usual CUDA figure; kernels of one step are not fused across steps)."""
    message_s: float = 10e-6
    """Latency of one NCCL point-to-point message between GPUs of one NVLink node."""
    kernels_per_step: int = 2
    """Kernels per LSTM layer per time step (recurrent GEMM, fused gates) forward; twice that backward."""


@dataclass(frozen=True)
class PaperShape:
    hidden: int = 1000
    embedding: int = 1000
    layers: int = 4
    shards: int = 4
    vocab: int = 80_000
    batch: int = 128
    src_words: int = 30
    tgt_words: int = 30
    attention: bool = False
    """Luong's global attention on the top decoder layer (`model.attention: luong`)."""

    @property
    def words(self) -> int:
        return self.batch * (self.src_words + self.tgt_words)

    @property
    def parameters(self) -> int:
        lstm = 2 * self.layers * 4 * self.hidden * (self.embedding + self.hidden + 1)
        return lstm + 160_000 * self.embedding + self.vocab * self.embedding + self.vocab * (self.hidden + 1)


def _op(flops: float, bytes_: float, *, rate: float, kernels: int, c: GpuConstants) -> float:
    return max(flops / rate, bytes_ / c.memory_bytes) + kernels * c.launch_s


def lstm_chunk_s(shape: PaperShape, batch: int, steps: int, c: GpuConstants, *, backward: bool) -> float:
    """One layer over `steps` time steps of `batch` sentences: one input projection, `steps` recurrent steps."""
    factor = 2 if backward else 1
    gates = 4 * shape.hidden
    projection = _op(factor * 2 * batch * steps * shape.hidden * gates, 4 * shape.hidden * gates,
                     rate=c.gemm_flops, kernels=factor, c=c)
    step = _op(factor * 2 * batch * shape.hidden * gates, 4 * shape.hidden * gates, rate=c.lstm_flops,
               kernels=factor * c.kernels_per_step, c=c)
    return projection + steps * step


def softmax_s(shape: PaperShape, tokens: int, c: GpuConstants, *, backward: bool, shards: int = 1) -> float:
    """`shards` vocabulary slices of one chunk's `tokens` target positions: logits GEMM and the exp/sum
    passes forward; the two gradient GEMMs backward."""
    size = shape.vocab // shape.shards * shards
    gemms = 2 if backward else 1
    return _op(gemms * 2 * tokens * shape.hidden * size, 3 * 4 * tokens * size, rate=c.gemm_flops,
               kernels=2 * gemms, c=c)


def attention_s(shape: PaperShape, tokens: int, c: GpuConstants, *, backward: bool) -> float:
    """The top stage's attention for `tokens` target positions over `shape.src_words` source positions: the
    query (H²), scores and context (2 S·H) and h̃ (2H·H) a position, twice that backward."""
    factor = 2 if backward else 1
    flops = factor * 2 * tokens * (3 * shape.hidden * shape.hidden + 2 * shape.src_words * shape.hidden)
    return _op(flops, 4 * tokens * (shape.src_words + 3 * shape.hidden), rate=c.gemm_flops, kernels=4 * factor, c=c)


def message_s(bytes_: float, c: GpuConstants) -> float:
    return c.message_s + bytes_ / c.link_bytes


def wavefront_costs(shape: PaperShape, placement: Placement, chunks: list[TimeChunk], c: GpuConstants) -> ProgramCosts:
    program = step_program(placement, chunks)
    seconds = []
    for op in program:
        seconds.append(_wavefront_op_s(op, shape, placement, c))
    sizes = {m: _message_bytes(m, shape, chunks) for op in program for m in op.sends if m.src != m.dst}
    return ProgramCosts(program, seconds, sizes, optimizer_s=4 * 3 * shape.parameters / c.memory_bytes,
                        words=shape.words)


def _tokens(chunk: TimeChunk, shape: PaperShape) -> int:
    return shape.batch * chunk.width


def _wavefront_op_s(op: Operation, shape: PaperShape, placement: Placement, c: GpuConstants) -> float:
    layers = len(placement.hops[op.hop][1]) if op.hop >= 0 else 0
    if op.kind in ("F", "B"):
        seconds = layers * lstm_chunk_s(shape, shape.batch, op.chunk.width, c, backward=op.kind == "B")
        if shape.attention and op.chunk.decoder and op.stage == placement.top_stage and op.hop >= 0:
            seconds += attention_s(shape, _tokens(op.chunk, shape), c, backward=op.kind == "B")
        return seconds
    if op.kind in ("P", "Q"):
        held = len(placement.shards[op.stage])
        return softmax_s(shape, _tokens(op.chunk, shape), c, backward=op.kind == "Q", shards=held)
    return 4 * c.launch_s  # L: the log-sum-exp of a few [N] vectors


def _message_bytes(message: Message, shape: PaperShape, chunks: list[TimeChunk]) -> int:
    chunk = chunks[message.chunk]
    if message.kind in ("act", "grad_act", "hidden", "grad_hidden"):
        return 4 * shape.batch * chunk.width * shape.hidden
    return 4 * 3 * shape.batch * chunk.width


def paper_chunks(shape: PaperShape, chunk_steps: int) -> list[TimeChunk]:
    return time_chunks(shape.src_words, shape.tgt_words + 1, chunk_steps)


def one_gpu_s(shape: PaperShape, c: GpuConstants) -> float:
    """Every operation in sequence on one GPU (the whole batch, the whole sequence in one chunk)."""
    steps = shape.src_words + shape.tgt_words + 1
    lstm = shape.layers * (lstm_chunk_s(shape, shape.batch, steps, c, backward=False)
                           + lstm_chunk_s(shape, shape.batch, steps, c, backward=True))
    tokens = shape.batch * (shape.tgt_words + 1)
    softmax = (softmax_s(shape, tokens, c, backward=False, shards=shape.shards)
               + softmax_s(shape, tokens, c, backward=True, shards=shape.shards))
    attention = (attention_s(shape, tokens, c, backward=False) + attention_s(shape, tokens, c, backward=True)
                 if shape.attention else 0.0)
    return lstm + softmax + attention + 4 * 3 * shape.parameters / c.memory_bytes


def one_f_one_b_s(shape: PaperShape, micro_batches: int, c: GpuConstants) -> float:
    """The paper's 8 stages (4 LSTM layers, 4 shards in a chain, as DeepSpeed's 1F1B runs them)."""
    batch = shape.batch // micro_batches
    steps = shape.src_words + shape.tgt_words + 1
    tokens = batch * (shape.tgt_words + 1)
    forward = [lstm_chunk_s(shape, batch, steps, c, backward=False)] * shape.layers + [
        softmax_s(shape, tokens, c, backward=False)] * shape.shards
    backward = [lstm_chunk_s(shape, batch, steps, c, backward=True)] * shape.layers + [
        softmax_s(shape, tokens, c, backward=True)] * shape.shards
    if shape.attention:  # on the top LSTM stage
        forward[shape.layers - 1] += attention_s(shape, tokens, c, backward=False)
        backward[shape.layers - 1] += attention_s(shape, tokens, c, backward=True)
    sends = [4 * batch * steps * shape.hidden] * (shape.layers + shape.shards - 1)
    costs = StageCosts(forward, backward, sends, optimizer_s=4 * 3 * shape.parameters / c.memory_bytes)
    return simulate(costs, micro_batches, c.link_bytes, c.message_s)["step_s"]


def projection(shape: PaperShape, c: GpuConstants, *, chunk_steps: int) -> dict[str, float]:
    """Words/s of one GPU, 1F1B at M = 4 and 8, and the wavefront, on the paper's 8-GPU layout."""
    layout = placement("chain", shape.layers, shape.shards, shape.layers + shape.shards)
    wavefront = simulate_program(wavefront_costs(shape, layout, paper_chunks(shape, chunk_steps), c),
                                 layout.stages, c.link_bytes, c.message_s)["step_s"]
    return {"one_gpu": shape.words / one_gpu_s(shape, c),
            "1f1b_m4": shape.words / one_f_one_b_s(shape, 4, c),
            "1f1b_m8": shape.words / one_f_one_b_s(shape, 8, c),
            "wavefront": shape.words / wavefront}


def sensitivity(shape: PaperShape, *, chunk_steps: int) -> list[dict]:
    """The projection with each constant halved and doubled."""
    base = GpuConstants()
    rows = [{"constant": "(as stated)", "factor": 1.0, **projection(shape, base, chunk_steps=chunk_steps)}]
    for name in ("gemm_flops", "lstm_flops", "memory_bytes", "link_bytes", "launch_s", "message_s"):
        for factor in (0.5, 2.0):
            changed = replace(base, **{name: getattr(base, name) * factor})
            rows.append({"constant": name, "factor": factor, **projection(shape, changed, chunk_steps=chunk_steps)})
    return rows
