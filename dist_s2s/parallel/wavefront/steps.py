"""`WavefrontSteps`: the `train.step.Steps` of one rank of the wavefront pipeline (`engine.py`)."""

from __future__ import annotations

import logging

from dist_s2s.config import Config
from dist_s2s.data.batch import Batch
from dist_s2s.model.seq2seq import Seq2Seq
from dist_s2s.parallel.pipeline_steps import PipelineSteps
from dist_s2s.parallel.placement import placement_name
from dist_s2s.parallel.wavefront.engine import build_engine
from dist_s2s.train.step import StepResult

log = logging.getLogger(__name__)


class WavefrontSteps(PipelineSteps):
    def __init__(self, config: Config, model: Seq2Seq):
        super().__init__(config, model, build_engine(config, model))
        log.info("pipeline: %d stages × %d replicas, wavefront over time chunks of %d steps (%s placement)",
                 config.parallel.stages, self.replicas, config.parallel.chunk_steps,
                 placement_name(config.parallel.placement, config.model.num_layers, config.model.softmax_shards,
                                config.parallel.stages))

    def train_step(self, batch: Batch, lr: float, step: int) -> StepResult:
        self._set_rate(lr)  # the same gradient: each replica's NLL × replicas / sentences, DeepSpeed averages
        nll = self.engine.train_wavefront(batch, scale=self.replicas / batch.step_sentences, step=step)
        self.lstm_dtype.after_forward(self.model)  # this stage's layers
        tokens, words, sentences = self._step_counts(batch)
        return StepResult(nll=nll, target_tokens=tokens, words=words, sentences=sentences,
                          grad_norm=self.engine.last_grad_norm)

    def validation_nll(self, batches) -> tuple[float, int]:
        total, tokens = 0.0, 0
        for batch in batches:
            total += self.engine.eval_wavefront(batch)
            tokens += self._step_counts(batch)[0]
        return total, tokens

    def record_timeline(self) -> list[dict]:
        """From now on each operation appends {kind, chunk, start, wait_s, compute_s} (the engine times them)."""
        self.engine.timeline = []
        return self.engine.timeline
