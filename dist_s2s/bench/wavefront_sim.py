"""Predict a wavefront step from each operation's cost, measured in one process, and a link model.

The step program (`parallel/wavefront/program.py`) is run once in this process with every stage's
`StageOperations` and messages handed over in memory: each operation is timed alone, on the real
batch, with the thread count a pipeline rank gets. The simulation then replays the program: an
operation starts when its stage has finished the previous one and every message it receives has
arrived (the sender's finish + latency + bytes ÷ bandwidth; nothing for a stage's own messages).
The step ends when the last stage is done, plus that stage's share of the optimizer step.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from dist_s2s.bench.one_f_one_b_sim import optimizer_step_s
from dist_s2s.data.batch import Batch
from dist_s2s.device import synchronize
from dist_s2s.model.dropout import step_dropout
from dist_s2s.model.seq2seq import Seq2Seq
from dist_s2s.parallel.placement import Placement
from dist_s2s.parallel.wavefront.operations import StageOperations, message_shape
from dist_s2s.parallel.wavefront.program import Message, Operation, batch_chunks, step_program
from dist_s2s.parallel.wavefront.transport import LocalTransport
from dist_s2s.train.clipping import rescale, squared_norm


@dataclass
class ProgramCosts:
    program: list[Operation]
    seconds: list[float]
    """Per operation, in program order."""
    message_bytes: dict[Message, int]
    optimizer_s: float
    """Clipping and the SGD update of the whole model (the stages share it)."""
    words: int
    stage_optimizer_s: list[float] | None = None
    """Each stage's own clipping and update, where measured (the stages hold unequal parameter counts)."""


def operation_costs(model: Seq2Seq, placement: Placement, batch: Batch, chunk_steps: int, *,
                    precision: str = "fp32", dropout: float = 0.0, step: int = 1) -> ProgramCosts:
    """Run one step's program in this process, timing every operation; then the optimizer step. `precision`
    and `dropout` (with the step number that keys its masks) as the pipeline runs them."""
    chunks = batch_chunks(batch, chunk_steps)
    program = step_program(placement, chunks)
    transport = LocalTransport()
    masks = step_dropout(dropout, batch.lines, seed=0, step=step, device=batch.src.device)
    stages = [StageOperations(model, placement, stage, batch=batch, chunks=chunks,
                              loss_scale=1 / batch.step_sentences, transport=transport, precision=precision,
                              dropout=masks)
              for stage in range(placement.stages)]
    model.zero_grad(set_to_none=True)
    seconds = []
    device = batch.src.device
    for op in program:
        synchronize(device)  # a GPU runs ahead of the host: time the operation, not its launch
        started = time.perf_counter()
        stages[op.stage].run(op)
        synchronize(device)
        seconds.append(time.perf_counter() - started)
    stage_optimizer_s = [stage_step_s(stage_parameters(model, placement, stage)) for stage in range(placement.stages)]
    optimizer_s = optimizer_step_s(model)
    sizes = {message: 4 * math.prod(message_shape(message, batch, chunks, model.config.hidden_size))
             for op in program for message in op.sends if message.src != message.dst}
    return ProgramCosts(program, seconds, sizes, optimizer_s, batch.words, stage_optimizer_s)


def stage_parameters(model: Seq2Seq, placement: Placement, stage: int) -> list[torch.nn.Parameter]:
    modules = [module for layer in placement.layers[stage] for module in (model.encoder[layer], model.decoder[layer])]
    modules += [model.softmax[shard] for shard in placement.shards[stage]]
    if model.attention is not None and stage == placement.top_stage:
        modules.append(model.attention)
    if 0 in placement.layers[stage]:
        modules += [model.src_embed, model.tgt_embed]
    return [p for module in modules for p in module.parameters()]


def stage_step_s(parameters: list[torch.nn.Parameter]) -> float:
    """One stage's part of the optimizer step, as `parallel.deepspeed_hooks` clips it: its squared gradient norm,
    the rescale and the SGD update (the gradients are left as they were)."""
    parameters = [p for p in parameters if p.grad is not None]
    if not parameters:
        return 0.0
    saved = [p.detach().clone() for p in parameters]
    grads = [p.grad.clone() for p in parameters]
    synchronize(parameters[0].device)
    started = time.perf_counter()
    norm = squared_norm(parameters).sqrt()
    rescale(parameters, norm, 5.0)
    with torch.no_grad():
        for parameter in parameters:
            parameter.add_(parameter.grad, alpha=-0.7)
    synchronize(parameters[0].device)
    seconds = time.perf_counter() - started
    with torch.no_grad():
        for parameter, value, grad in zip(parameters, saved, grads):
            parameter.copy_(value)
            parameter.grad = grad
    return seconds


def simulate_program(costs: ProgramCosts, stages: int, link_bytes_per_s: float, link_latency_s: float) -> dict:
    """Step seconds, busy share, and a timeline of (stage, kind, chunk, start, end, idle before) entries."""
    clock = [0.0] * stages
    arrival: dict[Message, float] = {}
    timeline = []
    for op, seconds in zip(costs.program, costs.seconds):
        ready = max((arrival[m] for m in op.receives), default=0.0)
        start = max(clock[op.stage], ready)
        timeline.append({"stage": op.stage, "kind": op.kind, "chunk": op.chunk.index, "start": start,
                         "end": start + seconds, "idle_before": start - clock[op.stage]})
        clock[op.stage] = start + seconds
        for message in op.sends:
            transfer = 0.0 if message.src == message.dst else (
                link_latency_s + costs.message_bytes[message] / link_bytes_per_s)
            arrival[message] = clock[op.stage] + transfer
    span = max(clock)
    if costs.stage_optimizer_s:  # the step ends when the slowest stage has its norm in and its update done
        step_s = max(end + own for end, own in zip(clock, costs.stage_optimizer_s))
    else:
        step_s = span + costs.optimizer_s / stages
    return {"step_s": step_s, "busy_fraction": sum(costs.seconds) / (stages * span),
            "timeline": timeline}
