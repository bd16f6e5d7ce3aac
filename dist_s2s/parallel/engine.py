"""DeepSpeed pipeline engine around the model's units, with two DeepSpeed 0.19.8 bugs worked around.

Both were found here by testing every stage layout against the single-device model (docs/platform.md):
- `clip_fp32_gradients` counts only pipeline stage 0's parameters in the norm, so every stage
  would clip by stage 0's norm. We replace it on the engine with the paper's rescale (§3.4)
  by the global norm, all-reduced over the pipeline group (data-parallel gradients are
  already averaged by then).
- `_allocate_or_extend_buffers` keys received buffers by tuple position only, so a float
  gradient can be written into an int64 buffer of the same position. We key them by
  (position, dtype).
"""

from __future__ import annotations

import math
import types
from collections.abc import Iterator

import torch
from torch import nn

from dist_s2s.config import Config
from dist_s2s.data.batch import Batch
from dist_s2s.model.dropout import row_keys
from dist_s2s.model.seq2seq import Seq2Seq
from dist_s2s.parallel.placement import placement
from dist_s2s.parallel.stages import pipeline_units, stage_boundaries
from dist_s2s.train.clipping import rescale, squared_norm
from dist_s2s.train.precision import autocast as precision_autocast
from dist_s2s.train.precision import configure as configure_precision


def placed_pipeline_class():
    """PipelineModule with explicit stage boundaries (imported lazily: DeepSpeed takes seconds to import)."""
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


class AutocastUnit(nn.Module):
    """A pipeline unit whose forward runs under `train.precision`'s autocast (DeepSpeed's engine calls the
    units itself; the backward follows the dtypes the forward chose)."""

    def __init__(self, unit: nn.Module, precision: str):
        super().__init__()
        self.unit, self.precision = unit, precision

    def forward(self, inputs):
        device = next(t for t in inputs if torch.is_tensor(t)).device
        with precision_autocast(self.precision, device):
            return self.unit(inputs)


def scaled_nll(token_nll: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The pipeline's loss: a micro-batch's summed token NLL times the scale riding in as its label."""
    return token_nll.sum() * scale.to(token_nll.dtype)


def training_scale(batch: Batch, micro_batches: int, replicas: int) -> float:
    """DeepSpeed divides each micro-batch's loss by the micro-batch count and averages over data
    replicas; multiplying by both and dividing by the step's sentences (§3.4: /128) makes the
    gradient the single-device trainer's and the reported loss the step's NLL per sentence."""
    return micro_batches * replicas / batch.step_sentences


def evaluation_scale(micro_batches: int, replicas: int) -> float:
    """Undoes the same averaging in `eval_batch`: its result is then the global batch's summed NLL."""
    return float(micro_batches * replicas)


def deepspeed_config(config: Config) -> dict:
    micro = config.parallel.micro_batches  # 1 under the wavefront
    per_micro = max(1, config.train.batch_size // (config.parallel.data * micro))
    return {
        "train_micro_batch_size_per_gpu": per_micro,
        "gradient_accumulation_steps": micro,
        "train_batch_size": per_micro * micro * config.parallel.data,
        "gradient_clipping": config.optim.max_grad_norm,  # > 0 so clip_fp32_gradients (ours) runs
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def build_engine(config: Config, model: Seq2Seq):
    """The pipeline engine of `model`'s units on this rank's stage: DeepSpeed's own for 1F1B, the
    `WavefrontEngine` for the wavefront. Every rank builds the full model from the same seed first, so
    each stage starts from the single-device weights. (The world size was checked by
    `join_process_group`, before the group formed.)"""
    import deepspeed

    units = pipeline_units(model)
    if config.parallel.schedule == "1f1b":
        parts = stage_boundaries(config.model.num_layers, config.model.softmax_shards, config.parallel.stages)
    else:
        layout = placement(config.parallel.placement, config.model.num_layers, config.model.softmax_shards,
                           config.parallel.stages)
        order, parts = layout.unit_order()
        units = [units[index] for index in order]
    if config.parallel.schedule == "1f1b" and config.train.precision == "bf16":
        units = [AutocastUnit(unit, config.train.precision) for unit in units]
    module = placed_pipeline_class()(
        units, parts, num_stages=config.parallel.stages,
        loss_fn=scaled_nll,
        partition_method="uniform", dynamic_shape=True,
    )
    optimizer = torch.optim.SGD(module.parameters(), lr=config.optim.lr, momentum=0.0)
    if config.parallel.schedule == "1f1b":
        engine, *_ = deepspeed.initialize(model=module, optimizer=optimizer, config=deepspeed_config(config))
    else:
        from deepspeed.runtime.config import DeepSpeedConfig

        from dist_s2s.parallel.wavefront_engine import WavefrontEngine

        # deepspeed.initialize picks PipelineEngine for a PipelineModule; its pipeline branch is this call.
        engine = WavefrontEngine(args=None, model=module, optimizer=optimizer, model_parameters=None,
                                 training_data=None, lr_scheduler=None, mpu=module.mpu(), dist_init_required=None,
                                 collate_fn=None, config=deepspeed_config(config),
                                 config_class=DeepSpeedConfig(deepspeed_config(config), module.mpu()),
                                 seq2seq=model, placement=layout, chunk_steps=config.parallel.chunk_steps,
                                 precision=config.train.precision, dropout=config.model.dropout,
                                 seed=config.train.seed, timeout_s=config.parallel.timeout_s)
    configure_precision(config.train.precision)
    engine.max_grad_norm = config.optim.max_grad_norm
    engine.last_grad_norm = float("nan")
    engine.clip_fp32_gradients = types.MethodType(_clip_by_global_norm, engine)
    engine._allocate_or_extend_buffers = types.MethodType(_buffers_by_position_and_dtype, engine)
    return engine


def _clip_by_global_norm(engine) -> None:
    import deepspeed.comm as dist

    # Tied copies on later stages carry ds_pipe_replicated=True (every parameter has the attribute).
    parameters = [p for p in engine.module.parameters() if not getattr(p, "ds_pipe_replicated", False)]
    squared = squared_norm(parameters).to(engine.device)
    dist.all_reduce(squared, group=engine.grid.get_pipe_parallel_group())
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


def unit_inputs(part: Batch, *, seed: int = 0, step: int = 0) -> tuple[torch.Tensor, ...]:
    """What the first pipeline unit takes: ids, lengths and the sentences' dropout keys for step `step`
    (`model.dropout.row_keys`)."""
    return part.src, part.src_lengths, part.tgt_in, part.tgt_out, row_keys(part.lines, seed, step)


def micro_batches(batch: Batch, parts: int, scale: float, *, seed: int = 0,
                  step: int = 0) -> Iterator[tuple[tuple[torch.Tensor, ...], torch.Tensor]]:
    """DeepSpeed's (inputs, label) per micro-batch: the units' inputs, the loss scale as label."""
    label = torch.tensor(scale, dtype=torch.float32)
    for part in batch.split(parts):
        yield unit_inputs(part, seed=seed, step=step), label
