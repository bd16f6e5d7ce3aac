"""Predict a pipeline's step time from measured per-stage times: DeepSpeed's 1F1B schedule, simulated.

Inputs are what one process can measure (`stage_costs`): each stage's forward and backward time
per micro-batch and the bytes it sends on; plus a link (bandwidth, latency), the micro-batch
count and the optimizer step. Each stage runs its operations in 1F1B order (warm-up forwards,
then one forward / one backward, then the remaining backwards); an operation starts when its
stage is free and its input has arrived. The step ends when the last stage is done, plus the
optimizer step. Validated against measured multi-process runs (`benchmarks/pipeline_simulator.py`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from dist_s2s.data.batch import Batch
from dist_s2s.device import synchronize
from dist_s2s.model.seq2seq import Seq2Seq
from dist_s2s.parallel.one_f_one_b import unit_inputs
from dist_s2s.parallel.stages import pipeline_units, stage_boundaries


@dataclass
class StageCosts:
    forward_s: list[float]
    """Seconds per micro-batch, per stage."""
    backward_s: list[float]
    activation_bytes: list[float]
    """Bytes stage s sends to s + 1 per micro-batch (its gradients come back the same size)."""
    optimizer_s: float
    """Gradient clipping and the SGD update of the whole model, split evenly over the stages."""


def one_f_one_b(stage: int, stages: int, micro_batches: int) -> list[tuple[str, int]]:
    warmup = min(stages - stage - 1, micro_batches)
    order = [("F", m) for m in range(warmup)]
    for m in range(micro_batches - warmup):
        order += [("F", warmup + m), ("B", m)]
    order += [("B", m) for m in range(micro_batches - warmup, micro_batches)]
    return order


def simulate(costs: StageCosts, micro_batches: int, link_bytes_per_s: float, link_latency_s: float) -> dict:
    """Step seconds and bubble fraction of one 1F1B step."""
    stages = len(costs.forward_s)
    transfer = [link_latency_s + size / link_bytes_per_s for size in costs.activation_bytes]
    done: dict[tuple[str, int, int], float] = {}
    timeline = []
    clock = [0.0] * stages
    pending = [one_f_one_b(s, stages, micro_batches) for s in range(stages)]
    while any(pending):
        progressed = False
        for s in range(stages):
            while pending[s]:
                kind, m = pending[s][0]
                if kind == "F":
                    needed = ("F", s - 1, m) if s > 0 else None
                    delay = transfer[s - 1] if s > 0 else 0.0
                    duration = costs.forward_s[s]
                else:
                    needed = ("B", s + 1, m) if s < stages - 1 else ("F", s, m)
                    delay = transfer[s] if s < stages - 1 else 0.0
                    duration = costs.backward_s[s]
                if needed is not None and needed not in done:
                    break
                start = max(clock[s], done[needed] + delay if needed else 0.0)
                timeline.append({"stage": s, "kind": kind, "chunk": m, "start": start, "end": start + duration,
                                 "idle_before": start - clock[s]})
                clock[s] = start + duration
                done[(kind, s, m)] = clock[s]
                pending[s].pop(0)
                progressed = True
        if not progressed:
            raise RuntimeError("schedule deadlock")  # cannot happen for 1F1B; guards a broken order
    step = max(clock) + costs.optimizer_s / stages
    busy = micro_batches * sum(f + b for f, b in zip(costs.forward_s, costs.backward_s))
    return {"step_s": step, "bubble_fraction": 1 - busy / (stages * max(clock)), "timeline": timeline}


def stage_costs(model: Seq2Seq, batches: list[Batch], stages: int, micro_batches: int) -> StageCosts:
    """Each stage's units timed on the micro-batches of real batches, in this process, in order."""
    units = pipeline_units(model)
    parts = stage_boundaries(len(model.encoder), len(model.softmax), stages)
    forward, backward, sent = [0.0] * stages, [0.0] * stages, [0.0] * max(0, stages - 1)
    optimizer = 0.0
    count = 0
    for batch in batches:
        model.zero_grad(set_to_none=True)
        for part in batch.split(micro_batches):
            inputs, outputs = [], []
            x = unit_inputs(part)
            for s in range(stages):
                if s:
                    x = tuple(t.detach().requires_grad_() if t.is_floating_point() else t for t in x)
                inputs.append(x)
                synchronize(part.src.device)
                started = time.perf_counter()
                for unit in units[parts[s]:parts[s + 1]]:
                    x = unit(x)
                synchronize(part.src.device)
                forward[s] += time.perf_counter() - started
                outputs.append(x)
                if s < stages - 1:
                    sent[s] += sum(t.numel() * t.element_size() for t in x)
            started = time.perf_counter()
            outputs[-1].sum().backward()
            synchronize(part.src.device)
            backward[-1] += time.perf_counter() - started
            for s in reversed(range(stages - 1)):
                pairs = [(o, i.grad) for o, i in zip(outputs[s], inputs[s + 1])
                         if o.is_floating_point() and i.grad is not None]
                started = time.perf_counter()
                torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
                synchronize(part.src.device)
                backward[s] += time.perf_counter() - started
            count += 1
        optimizer += optimizer_step_s(model)
    return StageCosts([f / count for f in forward], [b / count for b in backward], [a / count for a in sent],
                      optimizer / len(batches))


def optimizer_step_s(model: Seq2Seq) -> float:
    """Seconds of the step after the backward: the gradient rescaled to norm 5 and the SGD update."""
    device = next(model.parameters()).device
    synchronize(device)
    started = time.perf_counter()
    parameters = [p for p in model.parameters() if p.grad is not None]
    torch.nn.utils.clip_grad_norm_(parameters, 5.0)
    with torch.no_grad():
        for parameter in parameters:
            parameter.add_(parameter.grad, alpha=-0.7)
    synchronize(device)
    return time.perf_counter() - started
