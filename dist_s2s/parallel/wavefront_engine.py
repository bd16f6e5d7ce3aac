"""`WavefrontEngine`: DeepSpeed's `PipelineEngine` running the time-wavefront schedule (`wavefront.py`).

What is DeepSpeed's: the process topology and groups (stage ↔ rank, data-parallel groups), the
`PipeSchedule` / `PipeInstruction` stream and its dispatch table (`_INSTRUCTION_MAP`, extended
here as DeepSpeed's own DualPipeV engine extends it), point-to-point communication
(`deepspeed.comm`), the data-parallel gradient all-reduce (`ReduceGrads`) and the optimizer step
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
from types import MethodType

import torch
from deepspeed import comm as dist
from deepspeed.runtime.pipe.engine import PipelineEngine
from deepspeed.runtime.pipe.schedule import OptimizerStep, ReduceGrads

from dist_s2s.data.batch import Batch
from dist_s2s.model.dropout import Dropout, step_dropout
from dist_s2s.model.seq2seq import Seq2Seq
from dist_s2s.parallel.placement import Placement
from dist_s2s.parallel.wavefront import (
    Message,
    Operation,
    PostReceives,
    RunOperation,
    WaitSends,
    WavefrontSchedule,
    step_program,
    time_chunks,
)
from dist_s2s.parallel.wavefront_operations import StageOperations, as_received, message_shape


class WavefrontEngine(PipelineEngine):
    """Set up by `engine.build_engine` for `parallel.schedule: wavefront`."""

    def __init__(self, *args, seq2seq: Seq2Seq, placement: Placement, chunk_steps: int, precision: str = "fp32",
                 dropout: float = 0.0, seed: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.model, self.placement, self.chunk_steps, self.precision = seq2seq, placement, chunk_steps, precision
        self.dropout, self.seed = dropout, seed
        self.timeline: list[dict] | None = None
        """When a list, each instruction appends {kind, chunk, start, compute_s, wait_s}."""

    # --- the step -------------------------------------------------------------------------------------
    def train_wavefront(self, batch: Batch, scale: float, step: int = 0) -> float:
        """Optimizer step `step` (its number keys the dropout masks) on this replica's `batch`; every
        token's NLL is scaled by `scale` in the loss (replicas / sentences of the step). Returns the
        step's summed NLL over all replicas."""
        self.module.train()
        dropout = step_dropout(self.dropout, batch.lines, seed=self.seed, step=step, device=self.device)
        return self._run(batch, scale, train=True, dropout=dropout)

    def eval_wavefront(self, batch: Batch) -> float:
        """Summed NLL of the batch (all replicas), no gradients."""
        self.module.eval()
        with torch.no_grad():
            return self._run(batch, 1.0, train=False)

    def _run(self, batch: Batch, scale: float, *, train: bool, dropout: Dropout | None = None) -> float:
        self.batch = batch.to(self.device)
        self.chunks = time_chunks(batch.src.shape[1], batch.tgt_out.shape[1], self.chunk_steps)
        self.program = step_program(self.placement, self.chunks, backward=train)
        self.operations = StageOperations(self.model, self.placement, self.stage_id, batch=self.batch,
                                          chunks=self.chunks, loss_scale=scale, transport=self,
                                          precision=self.precision, dropout=dropout)
        self.local: dict[Message, torch.Tensor] = {}
        self.received: dict[Message, tuple[torch.Tensor, object]] = {}
        self.sent: list = []
        self._exec_schedule(WavefrontSchedule(self.program, self.num_stages, self.stage_id, train=train,
                                              replicas=self.grid.data_parallel_size))
        total = self.operations.nll.clone()
        dist.all_reduce(total)  # only each replica's top stage holds a non-zero sum
        return float(total)

    def _exec_schedule(self, pipe_schedule) -> None:
        """DeepSpeed's dispatch loop, timing each instruction when a timeline is being recorded."""
        for step_cmds in pipe_schedule:
            for cmd in step_cmds:
                if type(cmd) not in self._INSTRUCTION_MAP:
                    raise RuntimeError(f"{self.__class__.__name__} does not understand instruction {cmd!r}")
                self._wait_s = 0.0
                started = time.perf_counter()
                MethodType(self._INSTRUCTION_MAP[type(cmd)], self)(**cmd.kwargs)
                if self.timeline is not None:
                    op = cmd.kwargs.get("op")
                    self.timeline.append({"kind": op.kind if op else cmd.name, "chunk": op.chunk.index if op else -1,
                                          "start": started, "wait_s": self._wait_s,
                                          "compute_s": time.perf_counter() - started - self._wait_s})

    # --- messages -------------------------------------------------------------------------------------
    def _exec_post_receives(self) -> None:
        """Every message from another stage to this one, posted in the global order of the operations
        that send them (each sender sends in that order): tags are the messages' positions."""
        order = [m for op in self.program for m in op.sends]
        self.tags = {message: index for index, message in enumerate(order)}
        for message in order:
            if message.dst == self.stage_id and message.src != self.stage_id:
                shape = message_shape(message, self.batch, self.chunks, self.model.config.hidden_size)
                buffer = torch.empty(shape, dtype=torch.float32, device=self.device)
                work = dist.irecv(buffer, src=self.grid.stage_to_global(message.src), tag=self.tags[message])
                self.received[message] = (buffer, work)

    def send(self, message: Message, tensor: torch.Tensor) -> None:
        if message.dst == self.stage_id:
            self.local[message] = tensor.detach()
            return
        tensor = tensor.detach().contiguous()
        self.sent.append((tensor, dist.isend(tensor, dst=self.grid.stage_to_global(message.dst),
                                            tag=self.tags[message])))

    def receive(self, message: Message) -> torch.Tensor:
        if message.src == self.stage_id:
            tensor = self.local.pop(message)
        else:
            buffer, work = self.received.pop(message)
            waited = time.perf_counter()
            work.wait()
            self._wait_s += time.perf_counter() - waited
            tensor = buffer
        return as_received(message, tensor)

    def _exec_wait_sends(self) -> None:
        for _, work in self.sent:
            work.wait()
        self.sent = []

    def _exec_run_operation(self, op: Operation) -> None:
        self.operations.run(op)

    _INSTRUCTION_MAP = {
        ReduceGrads: PipelineEngine._exec_reduce_grads,
        OptimizerStep: PipelineEngine._exec_optimizer_step,
        PostReceives: _exec_post_receives,
        RunOperation: _exec_run_operation,
        WaitSends: _exec_wait_sends,
    }
