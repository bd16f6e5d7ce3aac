"""Every place dist-s2s reaches into DeepSpeed's private code, in one module: written against DeepSpeed 0.19.8.

DeepSpeed's pipeline engine offers no public way to place stages by hand, to clip by the norm of all
stages' gradients, to keep received buffers of different dtypes apart, or to run another schedule than
its own 1F1B. The hooks below do, each relying on names DeepSpeed keeps private; `PRIVATE_NAMES` lists
them, and `tests/test_deepspeed_hooks.py` fails with this module's name when the installed DeepSpeed is
another version or lacks one of them. Two bugs of 0.19.8 are worked around here (docs/platform.md):
- `clip_fp32_gradients` counts only pipeline stage 0's parameters in the norm, so every stage would clip
  by stage 0's norm: replaced on the engine by the paper's rescale (§3.4) by the global norm, all-reduced
  over the pipeline group (data-parallel gradients are already averaged by then);
- `_allocate_or_extend_buffers` keys received buffers by tuple position only, so a float gradient can be
  written into an int64 buffer of the same position: keyed by (position, dtype) here.
And `import deepspeed` loads its autotuner, which imports MLflow whether or not anything tracks:
`import_deepspeed` keeps that import out of every rank's start.
"""

from __future__ import annotations

import importlib
import math
import sys
import time
import types
from datetime import timedelta
from types import MethodType

from torch import nn

from dist_s2s.config import Config
from dist_s2s.train.clipping import rescale, squared_norm

WRITTEN_AGAINST = "0.19.8"


def import_deepspeed() -> types.ModuleType:
    """DeepSpeed, imported with `import mlflow` failing meanwhile. Its autotuner, which dist-s2s never runs,
    imports MLflow when DeepSpeed loads (`has_mlflow`, in a try), a second or two of every pipeline rank's
    start; a rank that tracks (rank 0) imports MLflow itself when its run starts, as one device does."""
    if "deepspeed" in sys.modules or "mlflow" in sys.modules:
        return importlib.import_module("deepspeed")
    sys.modules["mlflow"] = None  # `import mlflow` raises ImportError until the entry is gone
    try:
        return importlib.import_module("deepspeed")
    finally:
        del sys.modules["mlflow"]

PRIVATE_NAMES = (
    ("deepspeed.pipe", "PipelineModule", "_partition_layers"),
    ("deepspeed.pipe", "PipelineModule", "_set_bounds"),
    ("deepspeed.runtime.pipe.engine", "PipelineEngine", "_INSTRUCTION_MAP"),
    ("deepspeed.runtime.pipe.engine", "PipelineEngine", "_exec_schedule"),
    ("deepspeed.runtime.pipe.engine", "PipelineEngine", "_exec_reduce_grads"),
    ("deepspeed.runtime.pipe.engine", "PipelineEngine", "_exec_optimizer_step"),
    ("deepspeed.runtime.pipe.engine", "PipelineEngine", "_reserve_pipe_buffers"),
    ("deepspeed.runtime.pipe.engine", "PipelineEngine", "_allocate_or_extend_buffers"),
    ("deepspeed.runtime.pipe.engine", "PipelineEngine", "_allocate_buffer"),
    ("deepspeed.runtime.pipe.engine", "PipelineEngine", "clip_fp32_gradients"),
    ("deepspeed.comm.torch", None, "build_shm_op"),
)
"""(module, class or None, name) of everything private used here and in `wavefront/engine.py`, whose
`WavefrontEngine` subclasses `PipelineEngine`, extends `_INSTRUCTION_MAP` as DeepSpeed's own DualPipeV
engine does, and runs DeepSpeed's `_exec_reduce_grads` / `_exec_optimizer_step` from its own dispatch loop."""


def missing_private_names() -> list[str]:
    """The entries of `PRIVATE_NAMES` the installed DeepSpeed lacks."""
    missing = []
    for module_name, class_name, name in PRIVATE_NAMES:
        owner = importlib.import_module(module_name)
        if class_name is not None:
            owner = getattr(owner, class_name, None)
        if owner is None or not hasattr(owner, name):
            missing.append(f"{module_name}.{class_name + '.' if class_name else ''}{name}")
    return missing


def placed_pipeline_class():
    """PipelineModule with explicit stage boundaries (`_partition_layers` replaced; imported lazily: DeepSpeed
    takes seconds to import)."""
    from deepspeed.pipe import PipelineModule

    class PlacedPipeline(PipelineModule):
        def __init__(self, layers: list[nn.Module], parts: list[int], **kwargs):
            object.__setattr__(self, "_explicit_parts", list(parts))
            super().__init__(layers, **kwargs)

        def _partition_layers(self, method: str = "uniform") -> None:
            self.parts = list(self._explicit_parts)
            stage = self._topo.get_coord(self.global_rank).pipe
            self._set_bounds(start=self.parts[stage], stop=self.parts[stage + 1])

    return PlacedPipeline


def patch_engine(engine, config: Config) -> None:
    """Global-norm clipping and dtype-keyed receive buffers on this engine instance (the module docstring)."""
    engine.wait_timeout = timedelta(seconds=config.parallel.timeout_s)
    """Groups DeepSpeed forms wait 30 minutes by default (torch's for new groups); our waits, parallel.timeout_s."""
    engine.max_grad_norm = config.optim.max_grad_norm
    engine.last_grad_norm = float("nan")
    engine.clip_fp32_gradients = types.MethodType(_clip_by_global_norm, engine)
    engine._allocate_or_extend_buffers = types.MethodType(_buffers_by_position_and_dtype, engine)


def _clip_by_global_norm(engine) -> None:
    import deepspeed.comm as dist

    # Tied copies on later stages carry ds_pipe_replicated=True (every parameter has the attribute).
    parameters = [p for p in engine.module.parameters() if not getattr(p, "ds_pipe_replicated", False)]
    squared = squared_norm(parameters).to(engine.device)
    done = dist.all_reduce(squared, group=engine.grid.get_pipe_parallel_group(), async_op=True)
    if engine.device.type == "cpu" and engine.wait_timeout is not None:  # gloo: a hung stage ends the wait
        done.wait(timeout=engine.wait_timeout)
    else:  # NCCL's watchdog keeps the deadline; a timed wait would block the host
        done.wait()
    norm = squared.sqrt()
    rescale(parameters, norm, engine.max_grad_norm)
    engine.last_grad_norm = norm  # on the device: the loop reads it once a log line


def _buffers_by_position_and_dtype(engine, index: int, shape, dtype):
    pool = engine.__dict__.setdefault("_typed_buffers", {})
    numel = math.prod(shape) if len(shape) else 1
    buffer = pool.get((index, dtype))
    if buffer is None or buffer.numel() < numel:
        buffer = engine._allocate_buffer(shape, dtype=dtype, num_buffers=1)[0]
        pool[(index, dtype)] = buffer
        return buffer
    return buffer.flatten()[:numel].view(shape)


def without_shared_memory_op() -> None:
    """DeepSpeed's CPU shared-memory all-reduce, off: it serves only inference all-reduce (unused here), yet
    each rank leaves a /dev/shm segment named by master address, port and rank that is never unlinked, and
    a later job on the same port opens the stale segments and can abort."""
    # `deepspeed.comm.torch` as an attribute is the torch package (re-exported); the module is needed.
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None


def time_each_instruction(engine, entries: list[dict]) -> None:
    """DeepSpeed's 1F1B dispatch loop, on this instance (`_exec_schedule` is looked up there), timing each
    instruction into `entries`; a blocking receive's time is the stage's idle time."""
    waits = ("RecvActivation", "RecvGrad")

    def timed_exec_schedule(self, pipe_schedule):
        self._reserve_pipe_buffers(pipe_schedule.num_pipe_buffers())
        self.fwd_outputs = []
        for step_cmds in pipe_schedule:
            for cmd in step_cmds:
                started = time.perf_counter()
                MethodType(self._INSTRUCTION_MAP[type(cmd)], self)(**cmd.kwargs)
                seconds = time.perf_counter() - started
                waiting = cmd.name in waits
                entries.append({"kind": cmd.name, "chunk": cmd.kwargs.get("buffer_id", -1), "start": started,
                                "wait_s": seconds if waiting else 0.0, "compute_s": 0.0 if waiting else seconds})

    engine._exec_schedule = MethodType(timed_exec_schedule, engine)

