"""One optimizer step on one device: the paper's recipe (§3.4), and what a step reports.

The pipeline (`parallel/trainer.py`) provides the same three calls, so `trainer.py` runs
either without knowing which.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dist_s2s.config import Config
from dist_s2s.data.batch import Batch
from dist_s2s.model.seq2seq import Seq2Seq
from dist_s2s.train.checkpoint import CheckpointDir
from dist_s2s.train.clipping import clip_gradients


@dataclass
class StepResult:
    """Sums over the whole step (every replica's slice)."""

    nll: float
    target_tokens: int
    words: int
    sentences: int
    grad_norm: float


class SingleDeviceSteps:
    """The whole model in this process: batch → summed NLL / sentences → backward → rescale to
    norm 5 when larger → plain SGD at the scheduled rate."""

    replica, replicas, is_main = 0, 1, True

    def __init__(self, config: Config, model: Seq2Seq, device: torch.device):
        self.model, self.device = model.to(device), device
        self.parameters = list(model.parameters())
        self.max_grad_norm = config.optim.max_grad_norm
        self.optimizer = torch.optim.SGD(self.parameters, lr=config.optim.lr, momentum=0.0)

    def train_step(self, batch: Batch, lr: float) -> StepResult:
        batch = batch.to(self.device)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        nll, target_tokens = self.model(batch)
        (nll / batch.step_sentences).backward()  # §3.4: the gradient divided by the batch size
        grad_norm = clip_gradients(self.parameters, self.max_grad_norm)
        self.optimizer.step()
        return StepResult(nll=float(nll.detach()), target_tokens=int(target_tokens), words=batch.words,
                          sentences=len(batch), grad_norm=grad_norm)

    def validation_nll(self, batches) -> tuple[float, int]:
        """Summed NLL and target tokens (</s> included) over a whole split."""
        self.model.eval()
        total, tokens = 0.0, 0
        with torch.no_grad():
            for batch in batches:
                nll, count = self.model(batch.to(self.device))
                total += float(nll)
                tokens += int(count)
        self.model.train()
        return total, tokens

    def checkpoint_weights(self, checkpoints: CheckpointDir, step: int) -> dict:
        return {"model": self.model.unsharded_state_dict()}

    def close(self, finished: bool = True) -> None:
        pass
