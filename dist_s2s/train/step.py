"""The contract between the training loop and what runs the model (`Steps`), and its one-device provider.

`trainer.train` asks a `Steps` for a step, a validation pass and checkpoint weights, and never
learns where the model lives. `SingleDeviceSteps` (here) runs the paper's recipe (§3.4) in this
process; `parallel.schedules.pipeline_steps` builds the same step as one rank of a DeepSpeed
pipeline. Whoever launches training picks one (the `train` command, tests, benchmarks).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from dist_s2s.config import Config
from dist_s2s.data.batch import Batch
from dist_s2s.device import pick_device
from dist_s2s.errors import UserError
from dist_s2s.model.dropout import step_dropout
from dist_s2s.model.seq2seq import Seq2Seq
from dist_s2s.train import precision
from dist_s2s.train.checkpoint import CheckpointDir
from dist_s2s.train.clipping import clip_gradients
from dist_s2s.train.optimizer import build_optimizer, load_optimizer_state, optimizer_state, unsharded


@dataclass
class StepResult:
    """Sums over the whole step (every replica's slice). `nll` and `grad_norm` may be device tensors: the
    loop adds them up and reads them on the host once a log line, not once a step."""

    nll: float | torch.Tensor
    target_tokens: int
    words: int
    sentences: int
    grad_norm: float | torch.Tensor


@runtime_checkable
class Steps(Protocol):
    """What the loop needs from whatever runs the model, one process's view of it."""

    replica: int
    """Which data-parallel replica this process belongs to (its slice of every batch)."""
    device: torch.device
    """Where the steps compute (the loop prefetches batches to a CUDA device)."""
    is_main: bool
    """This process logs, tracks and writes the checkpoint file (rank 0 of a pipeline)."""

    def train_step(self, batch: Batch, lr: float, step: int) -> StepResult:
        """Optimizer step number `step` (1-based; with train.seed it keys the dropout masks) on `batch`
        (this replica's slice) at rate `lr`; sums over all replicas."""
        ...

    def validation_nll(self, batches: Iterable[Batch]) -> tuple[float, int]:
        """Summed NLL and target tokens (</s> included) over a split, without changing the weights."""
        ...

    def checkpoint_state(self, checkpoints: CheckpointDir, step: int) -> dict[str, Any] | None:
        """The weights and optimizer state entries of the checkpoint at `step` (None on processes that do not
        write it)."""
        ...

    def load_optimizer_state(self, state: dict[str, Any] | None, path: Path) -> None:
        """Resume the optimizer from a checkpoint's (`path`) state, under the unsharded names."""
        ...

    def ready(self) -> None:
        """This process is set up (weights loaded, tracking started); returns once every process is, and from
        then on a wait for another process lasts at most parallel.timeout_s."""
        ...

    def agree(self, decision: bool) -> bool:
        """The main process's `decision` (early stopping), on every process; each passes its own, only the
        main's counts."""
        ...

    def lost_contact(self, error: BaseException) -> bool:
        """Whether `error` means another process died or hung (the loop then says how to resume)."""
        ...

    def close(self, finished: bool) -> None:
        """Release what the steps hold; `finished` is False after a failure."""
        ...


StepsFactory = Callable[[Config, Seq2Seq], Steps]
"""Builds the steps for a model that already holds its initial or resumed weights."""


class SingleDeviceSteps:
    """The whole model in this process: batch → summed NLL / sentences → backward → rescale to
    norm 5 when larger → an SGD (or Adam) step at the scheduled rate."""

    replica, replicas, is_main = 0, 1, True

    def __init__(self, config: Config, model: Seq2Seq, device: torch.device):
        self.model, self.device = model.to(device), device
        self.parameters = list(model.parameters())
        self.max_grad_norm = config.optim.max_grad_norm
        self.optimizer = build_optimizer(self.parameters, config.optim)
        self.precision = config.train.precision
        self.dropout, self.seed = config.model.dropout, config.train.seed
        precision.configure(self.precision)
        self.lstm_dtype = precision.LSTMDtypeReport(self.precision)

    def train_step(self, batch: Batch, lr: float, step: int) -> StepResult:
        words, target_tokens = batch.words, int(batch.tgt_lengths.sum())  # host lengths: no device wait
        dropout = step_dropout(self.dropout, batch.lines, seed=self.seed, step=step, device=self.device)
        batch = batch.to(self.device)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        with precision.autocast(self.precision, self.device):
            nll, _ = self.model(batch, dropout)
        self.lstm_dtype.after_forward(self.model)
        (nll / batch.step_sentences).backward()  # §3.4: the gradient divided by the batch size
        grad_norm = clip_gradients(self.parameters, self.max_grad_norm)
        self.optimizer.step()
        return StepResult(nll=nll.detach(), target_tokens=target_tokens, words=words, sentences=len(batch),
                          grad_norm=grad_norm)

    def validation_nll(self, batches: Iterable[Batch]) -> tuple[float, int]:
        self.model.eval()
        total, tokens = 0.0, 0
        with torch.no_grad(), precision.autocast(self.precision, self.device):
            for batch in batches:
                nll, count = self.model(batch.to(self.device))
                total += float(nll)
                tokens += int(count)
        self.model.train()
        return total, tokens

    def checkpoint_state(self, checkpoints: CheckpointDir, step: int) -> dict[str, Any]:
        return {"model": self.model.unsharded_state_dict(),
                "optimizer": unsharded(optimizer_state(self.optimizer, self.model))}

    def load_optimizer_state(self, state: dict[str, Any] | None, path: Path) -> None:
        load_optimizer_state(self.optimizer, self.model, state, path)

    def ready(self) -> None:
        pass  # no other process to wait for

    def agree(self, decision: bool) -> bool:
        return decision  # the only process

    def lost_contact(self, error: BaseException) -> bool:
        return False  # no other process to lose

    def close(self, finished: bool = True) -> None:
        pass


def single_device_steps(config: Config, model: Seq2Seq) -> SingleDeviceSteps:
    """The default `StepsFactory`: the whole model on `train.device`, for a config that asks for one process."""
    require_one_process(config)
    return SingleDeviceSteps(config, model, pick_device(config.train.device))


def require_one_process(config: Config) -> None:
    """A config that asks for several processes is an error in a plain one, saying how to launch it."""
    processes = config.parallel.stages * config.parallel.data
    if processes > 1:
        raise UserError(f"parallel.stages × parallel.data = {processes} processes: launch with "
                        f"`torchrun --nproc_per_node {processes} -m dist_s2s train ...` or "
                        f"`deepspeed --num_gpus {processes} --module dist_s2s train ...`")
