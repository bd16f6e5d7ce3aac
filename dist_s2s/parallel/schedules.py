"""The one place a pipeline's schedule is chosen: `parallel.schedule` → the steps that run it."""

from __future__ import annotations

from dist_s2s.config import Config
from dist_s2s.model.seq2seq import Seq2Seq
from dist_s2s.parallel.one_f_one_b import OneFOneBSteps
from dist_s2s.parallel.pipeline_steps import PipelineSteps
from dist_s2s.parallel.wavefront.steps import WavefrontSteps

SCHEDULES: dict[str, type[PipelineSteps]] = {"1f1b": OneFOneBSteps, "wavefront": WavefrontSteps}


def pipeline_steps(config: Config, model: Seq2Seq) -> PipelineSteps:
    """This rank's steps of `model` under the configured schedule (a `train.step.StepsFactory`)."""
    return SCHEDULES[config.parallel.schedule](config, model)
