"""`WavefrontEngine`: DeepSpeed's `PipelineEngine` running the time-wavefront schedule (`program.py`).

What is DeepSpeed's: the process topology and groups (stage ↔ rank, data-parallel groups), the
`PipeSchedule` / `PipeInstruction` stream and its dispatch table (`_INSTRUCTION_MAP`, extended here as
DeepSpeed's own DualPipeV engine extends it: private, listed in `deepspeed_hooks.py`), point-to-point
communication (`deepspeed.comm`), the data-parallel gradient all-reduce (`ReduceGrads`) and the optimizer step
with our global-norm clipping (`OptimizerStep`). What DeepSpeed's pipeline engine cannot express,
and this adds: state carried by a stage from one chunk to the next (its forward pass is one
stateless call per micro-batch, its backward one `autograd.backward` per micro-batch, so a carried
(h, c) would be back-propagated twice); and messages to stages that are not the next one (the top
LSTM stage sends each decoder chunk to every softmax-shard stage at once, the paper's 4 slices
multiplying the same activations in parallel). Every rank holds the whole batch (the loader gives
each the same one), so message shapes are known locally: no shape exchange, no `dynamic_shape`.
"""

from __future__ import annotations

import time
from datetime import timedelta
from types import MethodType

import torch
from deepspeed import comm as dist
from deepspeed.runtime.pipe.engine import PipelineEngine
from deepspeed.runtime.pipe.schedule import OptimizerStep, ReduceGrads

from dist_s2s.config import Config
from dist_s2s.data.batch import Batch
from dist_s2s.model.dropout import Dropout, step_dropout
from dist_s2s.model.seq2seq import Seq2Seq
from dist_s2s.parallel.deepspeed_hooks import patch_engine
from dist_s2s.parallel.pipeline_steps import deepspeed_config, pipeline_module, stage_optimizer
from dist_s2s.parallel.placement import Placement, placement
from dist_s2s.parallel.stages import pipeline_units
from dist_s2s.parallel.wavefront.clock import instruction_clock
from dist_s2s.parallel.wavefront.messages import StageMessages, direction_groups
from dist_s2s.parallel.wavefront.operations import StageOperations, message_shape
from dist_s2s.parallel.wavefront.program import (
    Operation,
    PostReceives,
    RunOperation,
    WaitSends,
    WavefrontSchedule,
    batch_chunks,
    step_program,
)
from dist_s2s.train.precision import autocast
from dist_s2s.train.precision import configure as configure_precision


def build_engine(config: Config, model: Seq2Seq) -> WavefrontEngine:
    """The wavefront engine of `model`'s units on this rank's stage, in the configured placement."""
    from deepspeed.runtime.config import DeepSpeedConfig

    layout = placement(config.parallel.placement, config.model.num_layers, config.model.softmax_shards,
                       config.parallel.stages)
    order, parts = layout.unit_order()
    units = pipeline_units(model)
    module = pipeline_module(config, [units[index] for index in order], parts)
    # deepspeed.initialize picks PipelineEngine for a PipelineModule; its pipeline branch is this call.
    engine = WavefrontEngine(args=None, model=module, optimizer=stage_optimizer(module, config), model_parameters=None,
                             training_data=None, lr_scheduler=None, mpu=module.mpu(), dist_init_required=None,
                             collate_fn=None, config=deepspeed_config(config),
                             config_class=DeepSpeedConfig(deepspeed_config(config), module.mpu()),
                             seq2seq=model, placement=layout, chunk_steps=config.parallel.chunk_steps,
                             precision=config.train.precision, dropout=config.model.dropout, seed=config.train.seed,
                             timeout_s=config.parallel.timeout_s, start_timeout_s=config.parallel.start_timeout_s)
    configure_precision(config.train.precision)
    patch_engine(engine, config)
    return engine


class WavefrontEngine(PipelineEngine):
    """Set up by `build_engine`."""

    def __init__(self, *args, seq2seq: Seq2Seq, placement: Placement, chunk_steps: int, precision: str = "fp32",
                 dropout: float = 0.0, seed: int = 0, timeout_s: float | None = None,
                 start_timeout_s: float | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.model, self.placement, self.chunk_steps, self.precision = seq2seq, placement, chunk_steps, precision
        self.dropout, self.seed = dropout, seed
        self.timeline: list[dict] | None = None
        """When a list, each instruction appends {kind, chunk, start, compute_s, wait_s}."""
        replica = self.grid.data_parallel_id
        groups = direction_groups(placement, self.grid.data_parallel_size,
                                  lambda stage, data: self.grid.stage_to_global(stage, data=data), replica,
                                  timeout=timedelta(seconds=start_timeout_s) if start_timeout_s else None)
        self.messages = StageMessages(self.stage_id, groups, self.grid.stage_to_global, self.device,
                                      timeout=timedelta(seconds=timeout_s) if timeout_s else None)

    # --- the step -------------------------------------------------------------------------------------
    def train_wavefront(self, batch: Batch, scale: float, step: int = 0) -> torch.Tensor:
        """Optimizer step `step` (its number keys the dropout masks) on this replica's `batch`; every
        token's NLL is scaled by `scale` in the loss (replicas / sentences of the step). Returns the
        step's summed NLL over all replicas, on the device (the loop reads it once a log line)."""
        self.module.train()
        dropout = step_dropout(self.dropout, batch.lines, seed=self.seed, step=step, device=self.device)
        return self._run(batch, scale, train=True, dropout=dropout)

    def eval_wavefront(self, batch: Batch) -> float:
        """Summed NLL of the batch (all replicas), no gradients."""
        self.module.eval()
        with torch.no_grad():
            return float(self._run(batch, 1.0, train=False))

    def _run(self, batch: Batch, scale: float, *, train: bool, dropout: Dropout | None = None) -> torch.Tensor:
        self.batch = batch.to(self.device)
        self.chunks = batch_chunks(batch, self.chunk_steps)
        self.program = step_program(self.placement, self.chunks, backward=train)
        self.operations = StageOperations(self.model, self.placement, self.stage_id, batch=self.batch,
                                          chunks=self.chunks, loss_scale=scale, transport=self.messages,
                                          precision=self.precision, dropout=dropout)
        # One autocast region for the whole step: its weights are cast to bf16 once, not once a chunk (the
        # operations turn autocast off for their backward passes; the optimizer step has no autocast op).
        with autocast(self.precision, self.device):
            self._exec_schedule(WavefrontSchedule(self.program, self.num_stages, self.stage_id, train=train,
                                                  replicas=self.grid.data_parallel_size))
        total = self.operations.nll.clone()
        dist.all_reduce(total)  # only each replica's top stage holds a non-zero sum
        return total

    def _exec_schedule(self, pipe_schedule) -> None:
        """DeepSpeed's dispatch loop, timing each instruction when a timeline is being recorded (`clock.py`: on a
        GPU with events on the compute stream, never a device-wide synchronize)."""
        clock = instruction_clock(self.device) if self.timeline is not None else None
        self.messages.clock, marks = clock, []
        origin = (time.perf_counter(), clock.mark()) if clock else None
        for step_cmds in pipe_schedule:
            for cmd in step_cmds:
                if type(cmd) not in self._INSTRUCTION_MAP:
                    raise RuntimeError(f"{self.__class__.__name__} does not understand instruction {cmd!r}")
                began = clock.mark() if clock else None
                self.messages.waits = []
                MethodType(self._INSTRUCTION_MAP[type(cmd)], self)(**cmd.kwargs)
                if clock:
                    marks.append((cmd, began, clock.mark(), self.messages.waits))
        if clock:
            self._record(clock, origin, marks)

    def _record(self, clock, origin, marks) -> None:
        """Each timed instruction as a timeline entry: its start (host seconds), the time it waited for messages
        and the rest of its time."""
        clock.settle(marks[-1][2])
        host_origin, origin_mark = origin
        for cmd, began, ended, waits in marks:
            op = cmd.kwargs.get("op")
            wait_s = sum(clock.seconds(before, after) for before, after in waits)
            self.timeline.append({"kind": op.kind if op else cmd.name, "chunk": op.chunk.index if op else -1,
                                  "start": host_origin + clock.seconds(origin_mark, began), "wait_s": wait_s,
                                  "compute_s": clock.seconds(began, ended) - wait_s})

    # --- messages (messages.py) ------------------------------------------------------------------------
    def _exec_post_receives(self) -> None:
        hidden_size = self.model.config.hidden_size
        self.messages.post_receives(self.program,
                                    lambda message: message_shape(message, self.batch, self.chunks, hidden_size))

    def _exec_wait_sends(self) -> None:
        self.messages.wait_sends()

    def _exec_run_operation(self, op: Operation) -> None:
        self.operations.run(op)

    _INSTRUCTION_MAP = {
        ReduceGrads: PipelineEngine._exec_reduce_grads,
        OptimizerStep: PipelineEngine._exec_optimizer_step,
        PostReceives: _exec_post_receives,
        RunOperation: _exec_run_operation,
        WaitSends: _exec_wait_sends,
    }
