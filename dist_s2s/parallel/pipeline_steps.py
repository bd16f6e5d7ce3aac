"""`PipelineSteps`: the `train.step.Steps` of one rank of a DeepSpeed pipeline.

    torchrun --nproc_per_node 8 -m dist_s2s train --config configs/paper.yaml
    deepspeed --num_gpus 8 --module dist_s2s train --config configs/paper.yaml
    DS_ACCELERATOR=cpu torchrun --nproc_per_node 2 -m dist_s2s train --config configs/tiny.yaml --parallel.stages=2

The loop, logging, validation schedule and checkpoints are the single-device trainer's
(`train/trainer.py`); this supplies the step, validation and checkpoint weights of a pipeline.
Rank 0 (first stage of replica 0) logs, tracks and writes the checkpoint file; each stage of
replica 0 writes its own part of the weights beside it.
"""

from __future__ import annotations

import logging

import torch

from dist_s2s.config import Config
from dist_s2s.data.batch import Batch
from dist_s2s.model.seq2seq import Seq2Seq
from dist_s2s.parallel.checkpoint import stage_state
from dist_s2s.parallel.engine import build_engine, evaluation_scale, micro_batches, training_scale
from dist_s2s.parallel.placement import placement_name
from dist_s2s.parallel.process_group import lost_contact
from dist_s2s.train.checkpoint import CheckpointDir
from dist_s2s.train.precision import LSTMDtypeReport
from dist_s2s.train.step import StepResult

log = logging.getLogger(__name__)


def bubble_fraction(stages: int, micro_batches: int) -> float:
    """Idle share of each stage in a 1F1B step: (S - 1) / (M + S - 1)."""
    return (stages - 1) / (micro_batches + stages - 1)


class PipelineSteps:
    """One rank's stage of the pipeline engine, stepping on its replica's slice of each batch."""

    def __init__(self, config: Config, model: Seq2Seq):
        self.model = model
        self.engine = build_engine(config, model)
        self.micro = config.parallel.micro_batches
        self.wavefront = config.parallel.schedule == "wavefront"
        self.replicas = config.parallel.data
        self.replica = self.engine.grid.data_parallel_id
        self.stage = self.engine.stage_id
        self.is_main = torch.distributed.get_rank() == 0
        self.device = self.engine.device
        self.seed = config.train.seed
        self.lstm_dtype = LSTMDtypeReport(config.train.precision)
        if self.wavefront:
            log.info("pipeline: %d stages × %d replicas, wavefront over time chunks of %d steps (%s placement)",
                     config.parallel.stages, self.replicas, config.parallel.chunk_steps,
                     placement_name(config.parallel.placement, config.model.num_layers, config.model.softmax_shards,
                                    config.parallel.stages))
        else:
            log.info("pipeline: %d stages × %d replicas, 1F1B over %d micro-batches a batch: bubble %.0f%% of "
                     "each stage's step", config.parallel.stages, self.replicas, self.micro,
                     100 * bubble_fraction(config.parallel.stages, self.micro))

    def train_step(self, batch: Batch, lr: float, step: int) -> StepResult:
        for group in self.engine.optimizer.param_groups:
            group["lr"] = lr
        if self.wavefront:  # the same gradient: each replica's NLL × replicas / sentences, DeepSpeed averages
            nll = self.engine.train_wavefront(batch, scale=self.replicas / batch.step_sentences, step=step)
        else:
            scale = training_scale(batch, self.micro, self.replicas)
            loss = self.engine.train_batch(data_iter=micro_batches(batch, self.micro, scale, seed=self.seed,
                                                                   step=step))
            nll = loss * batch.step_sentences  # on the device: the loop reads it once a log line
        self.lstm_dtype.after_forward(self.model)  # this stage's layers
        tokens, words, sentences = self._step_counts(batch)
        return StepResult(nll=nll, target_tokens=tokens, words=words, sentences=sentences,
                          grad_norm=self.engine.last_grad_norm)

    def validation_nll(self, batches) -> tuple[float, int]:
        total, tokens = 0.0, 0
        for batch in batches:
            if self.wavefront:
                total += self.engine.eval_wavefront(batch)
                tokens += self._step_counts(batch)[0]
                continue
            parts = min(self.micro, batch.step_sentences // self.replicas)
            total += float(self.engine.eval_batch(micro_batches(batch, parts, evaluation_scale(parts, self.replicas)),
                                                  num_micro_batches=parts))
            tokens += self._step_counts(batch)[0]
        return total, tokens

    def _step_counts(self, batch: Batch) -> tuple[int, int, int]:
        """Target tokens, words and sentences of the whole step, all replicas' slices summed."""
        counts = torch.tensor([int(batch.tgt_lengths.sum()), batch.words, len(batch)], dtype=torch.int64)
        if self.replicas > 1:
            counts = counts.to(self.device)
            torch.distributed.all_reduce(counts, group=self.engine.grid.get_data_parallel_group())
        tokens, words, sentences = counts.tolist()
        return tokens, words, sentences

    def lost_contact(self, error: BaseException) -> bool:
        return lost_contact(error)

    def checkpoint_weights(self, checkpoints: CheckpointDir, step: int) -> dict | None:
        """Each stage of replica 0 writes its part; rank 0 gets the list for the checkpoint file."""
        entry = None
        if self.replica == 0:
            entry = {"stage": self.stage, **checkpoints.save_part(step, f"stage-{self.stage}",
                                                                  stage_state(self.engine, self.model))}
        entries = [None] * torch.distributed.get_world_size() if self.is_main else None
        torch.distributed.gather_object(entry, entries, dst=0)
        if not self.is_main:
            return None
        return {"model_parts": sorted((e for e in entries if e is not None), key=lambda e: e["stage"])}

    def close(self, finished: bool = True) -> None:
        """After a finished run, leave together: a rank tearing down its group while a peer's last send
        was in flight aborted ("terminate called without an active exception", once in a 4-stage bench).
        After a failure there may be nobody left to wait for."""
        if finished:
            torch.distributed.barrier()
        torch.distributed.destroy_process_group()
