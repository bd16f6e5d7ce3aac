"""DeepSpeed's own 1F1B schedule over the model's units (`stages.py`), in the chain placement.

Each batch is cut into `parallel.micro_batches` micro-batches (interleaved rows, each trimmed to its own
longest sentence); DeepSpeed runs one forward, one backward per micro-batch, passing activations only to
the next stage, so this schedule can run only the chain placement. Its loss is the micro-batch's summed
token NLL times a scale riding in as the label, chosen so that the gradient is the single-device trainer's.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import torch
from torch import nn

from dist_s2s.config import Config
from dist_s2s.data.batch import Batch
from dist_s2s.model.dropout import row_keys
from dist_s2s.model.seq2seq import Seq2Seq
from dist_s2s.parallel.deepspeed_hooks import patch_engine, time_each_instruction
from dist_s2s.parallel.pipeline_steps import PipelineSteps, deepspeed_config, pipeline_module, stage_optimizer
from dist_s2s.parallel.stages import pipeline_units, stage_boundaries
from dist_s2s.train.precision import autocast as precision_autocast
from dist_s2s.train.precision import configure as configure_precision
from dist_s2s.train.step import StepResult

log = logging.getLogger(__name__)


class OneFOneBSteps(PipelineSteps):
    def __init__(self, config: Config, model: Seq2Seq):
        super().__init__(config, model, build_engine(config, model))
        self.micro = config.parallel.micro_batches
        log.info("pipeline: %d stages × %d replicas, 1F1B over %d micro-batches a batch: bubble %.0f%% of "
                 "each stage's step", config.parallel.stages, self.replicas, self.micro,
                 100 * bubble_fraction(config.parallel.stages, self.micro))

    def train_step(self, batch: Batch, lr: float, step: int) -> StepResult:
        self._set_rate(lr)
        scale = training_scale(batch, self.micro, self.replicas)
        loss = self.engine.train_batch(data_iter=micro_batches(batch, self.micro, scale, seed=self.seed, step=step))
        self.lstm_dtype.after_forward(self.model)  # this stage's layers
        tokens, words, sentences = self._step_counts(batch)
        return StepResult(nll=loss * batch.step_sentences,  # on the device: the loop reads it once a log line
                          target_tokens=tokens, words=words, sentences=sentences, grad_norm=self.engine.last_grad_norm)

    def validation_nll(self, batches) -> tuple[float, int]:
        total, tokens = 0.0, 0
        for batch in batches:
            parts = min(self.micro, batch.step_sentences // self.replicas)
            total += float(self.engine.eval_batch(micro_batches(batch, parts, evaluation_scale(parts, self.replicas)),
                                                  num_micro_batches=parts))
            tokens += self._step_counts(batch)[0]
        return total, tokens

    def record_timeline(self) -> list[dict]:
        """From now on each instruction DeepSpeed's loop executes appends {kind, chunk, start, wait_s, compute_s}."""
        entries: list[dict] = []
        time_each_instruction(self.engine, entries)
        return entries


def build_engine(config: Config, model: Seq2Seq):
    """DeepSpeed's pipeline engine of `model`'s units on this rank's stage (the units dealt in order: chain)."""
    import deepspeed

    units = pipeline_units(model)
    if config.train.precision == "bf16":
        units = [AutocastUnit(unit, config.train.precision) for unit in units]
    parts = stage_boundaries(config.model.num_layers, config.model.softmax_shards, config.parallel.stages)
    module = pipeline_module(config, units, parts)
    engine, *_ = deepspeed.initialize(model=module, optimizer=stage_optimizer(module, config),
                                      config=deepspeed_config(config))
    configure_precision(config.train.precision)
    patch_engine(engine, config)
    return engine


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


def bubble_fraction(stages: int, micro_batches: int) -> float:
    """Idle share of each stage in a 1F1B step: (S - 1) / (M + S - 1)."""
    return (stages - 1) / (micro_batches + stages - 1)


def training_scale(batch: Batch, micro_batches: int, replicas: int) -> float:
    """DeepSpeed divides each micro-batch's loss by the micro-batch count and averages over data
    replicas; multiplying by both and dividing by the step's sentences (§3.4: /128) makes the
    gradient the single-device trainer's and the reported loss the step's NLL per sentence."""
    return micro_batches * replicas / batch.step_sentences


def evaluation_scale(micro_batches: int, replicas: int) -> float:
    """Undoes the same averaging in `eval_batch`: its result is then the global batch's summed NLL."""
    return float(micro_batches * replicas)


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
