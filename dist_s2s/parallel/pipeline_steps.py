"""`PipelineSteps`: what the `train.step.Steps` of every pipeline schedule share (one rank's view).

    torchrun --nproc_per_node 8 -m dist_s2s train --config configs/paper.yaml
    deepspeed --num_gpus 8 --module dist_s2s train --config configs/paper.yaml
    DS_ACCELERATOR=cpu torchrun --nproc_per_node 2 -m dist_s2s train --config configs/tiny.yaml --parallel.stages=2

The loop, logging, validation schedule and checkpoints are the single-device trainer's
(`train/trainer.py`); a schedule's steps (`one_f_one_b.OneFOneBSteps`, `wavefront.steps.WavefrontSteps`,
chosen once in `schedules.py`) supply the step and the validation pass, this the rest. Rank 0 (first
stage of replica 0) logs, tracks and writes the checkpoint file; each stage of replica 0 writes its own
part of the weights beside it.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import torch
from torch import nn

from dist_s2s.config import Config
from dist_s2s.data.batch import Batch
from dist_s2s.model.seq2seq import Seq2Seq
from dist_s2s.parallel.deepspeed_hooks import placed_pipeline_class
from dist_s2s.parallel.process_group import bound_every_wait, leave_process_group, lost_contact
from dist_s2s.parallel.stage_checkpoint import stage_state
from dist_s2s.parallel.stages import scaled_nll
from dist_s2s.train.checkpoint import CheckpointDir
from dist_s2s.train.optimizer import build_optimizer, load_optimizer_state, optimizer_state
from dist_s2s.train.precision import LSTMDtypeReport


class PipelineSteps:
    """One rank's stage of a pipeline engine (`self.engine`, built by the schedule), stepping on its replica's
    slice of each batch."""

    def __init__(self, config: Config, model: Seq2Seq, engine):
        self.model, self.engine = model, engine
        self.replicas = config.parallel.data
        self.replica = engine.grid.data_parallel_id
        self.stage = engine.stage_id
        self.is_main = torch.distributed.get_rank() == 0
        self.device = engine.device
        self.seed = config.train.seed
        self.lstm_dtype = LSTMDtypeReport(config.train.precision)
        self.timeout = timedelta(seconds=config.parallel.timeout_s)

    def _set_rate(self, lr: float) -> None:
        for group in self.engine.optimizer.param_groups:
            group["lr"] = lr

    def _step_counts(self, batch: Batch) -> tuple[int, int, int]:
        """Target tokens, words and sentences of the whole step, all replicas' slices summed: the loader's count
        of the step (`Batch.step_totals`) where it split one, else summed over the replicas (an all-reduce and a
        read of the device, once a step: a batch made by hand)."""
        if self.replicas == 1:
            return batch.totals()
        if batch.step_totals is not None:
            return batch.step_totals
        counts = torch.tensor(batch.totals(), dtype=torch.int64).to(self.device)
        torch.distributed.all_reduce(counts, group=self.engine.grid.get_data_parallel_group())
        tokens, words, sentences = counts.tolist()
        return tokens, words, sentences

    def load_optimizer_state(self, state: dict | None, path: Path) -> None:
        """Every replica's stage takes its parameters' share (replicas step alike, so they keep the same)."""
        load_optimizer_state(self.engine.optimizer, self.model, state, path)

    def ready(self) -> None:
        """Meet the other ranks once set up, within parallel.start_timeout_s: rank 0 may still be starting its
        MLflow run (seconds against a server far away) while the others would already wait for its first
        activations under training's shorter timeout. Then training's timeout on every group."""
        torch.distributed.barrier()
        bound_every_wait(self.timeout)

    def agree(self, decision: bool) -> bool:
        """Rank 0's decision, broadcast from a tensor on this rank's device (NCCL moves device tensors only)."""
        flag = torch.tensor([1 if decision else 0], dtype=torch.int32, device=self.device)
        torch.distributed.broadcast(flag, src=0)
        return bool(flag.item())

    def lost_contact(self, error: BaseException) -> bool:
        return lost_contact(error)

    def checkpoint_state(self, checkpoints: CheckpointDir, step: int) -> dict | None:
        """Each stage of replica 0 writes its part (its weights and optimizer state); rank 0 gets the list for the
        checkpoint file."""
        entry = None
        if self.replica == 0:
            part = checkpoints.save_part(step, f"stage-{self.stage}", stage_state(self.engine, self.model),
                                         optimizer_state(self.engine.optimizer, self.model))
            entry = {"stage": self.stage, **part}
        entries = [None] * torch.distributed.get_world_size() if self.is_main else None
        torch.distributed.gather_object(entry, entries, dst=0)
        if not self.is_main:
            return None
        return {"model_parts": sorted((e for e in entries if e is not None), key=lambda e: e["stage"])}

    def close(self, finished: bool = True) -> None:
        """Leave the groups as every rank does (`process_group.leave_process_group`)."""
        leave_process_group(finished)


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


def pipeline_module(config: Config, units: list[nn.Module], parts: list[int]):
    """The units as DeepSpeed's PipelineModule, this rank's stage holding units[parts[s]:parts[s + 1]]. Every rank
    built the full model from the same seed first, so each stage starts from the single-device weights."""
    return placed_pipeline_class()(units, parts, num_stages=config.parallel.stages, loss_fn=scaled_nll,
                                   partition_method="uniform", dynamic_shape=True)


def stage_optimizer(module: nn.Module, config: Config) -> torch.optim.Optimizer:
    """`optim.optimizer` over this rank's stage, whatever the schedule: SGD and Adam work parameter by parameter,
    so the stages' optimizers together step as the one-device optimizer does."""
    return build_optimizer(module.parameters(), config.optim)
