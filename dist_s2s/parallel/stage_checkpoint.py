"""Pipeline parameters ↔ the single-device checkpoint format.

Every stage's parameters are the model's own parameter objects (`stages.py` shares them), so the
model's names identify them. A pipeline checkpoint is one part file per stage, each written by
its stage; `train/checkpoint.model_weights` merges the parts and un-shards the softmax into the
single-device format, which loads into any stage or shard count. `convert` goes either way.

    dist-s2s convert --checkpoint runs/x/checkpoints/step-00001000.pt --output model.pt
    dist-s2s convert --checkpoint model.pt --output pipeline/step-00001000.pt --stages 8
"""

from __future__ import annotations

from pathlib import Path

import torch

from dist_s2s.config import config_from_dict
from dist_s2s.errors import UserError
from dist_s2s.model.seq2seq import Seq2Seq
from dist_s2s.parallel.stages import pipeline_units, stage_boundaries
from dist_s2s.train.checkpoint import FORMAT, load_checkpoint, load_weights, read_model, write_file, write_part
from dist_s2s.train.optimizer import MOMENTS


def by_model_name(model: Seq2Seq, parameters) -> dict[str, torch.Tensor]:
    """Copies of `parameters` (the model's own objects, as stages share them) under the model's names."""
    parameters = list(parameters)
    return {name: p.detach().clone() for name, p in zip(model.names_of(parameters), parameters)}


def stage_state(engine, model: Seq2Seq) -> dict[str, torch.Tensor]:
    """This rank's stage parameters, under the single-device model's names."""
    return by_model_name(model, engine.module.parameters())


def stage_weights(model: Seq2Seq, stages: int) -> list[dict[str, torch.Tensor]]:
    """The model's parameters as `stages` pipeline stages would hold them, stage by stage."""
    units = pipeline_units(model)
    parts = stage_boundaries(len(model.encoder), len(model.softmax), stages)
    return [by_model_name(model, (p for unit in units[parts[s]:parts[s + 1]] for p in unit.parameters()))
            for s in range(stages)]


def stage_optimizer_states(model: Seq2Seq, source: Path, optimizer: dict | None, stages: int) -> list[dict | None]:
    """An unsharded optimizer state (`train.optimizer`) split as `stages` stages hold it: each moment is loaded
    into `model` as if weights and cut by `stage_weights`."""
    if optimizer is None or optimizer["step"] is None:
        return [optimizer] * stages
    split = {}
    for moment in MOMENTS[optimizer["kind"]]:
        load_weights(model, source, optimizer[moment])
        split[moment] = stage_weights(model, stages)
    return [{**optimizer, **{moment: split[moment][s] for moment in split}} for s in range(stages)]


def convert(source: Path, output: Path, stages: int | None = None) -> Path:
    """Rewrite a checkpoint (either format) as one single-device file, or as `stages` stage parts
    beside `output`. Everything but the layout (step, data cursor, RNG, config, the optimizer's state) is
    kept."""
    if stages is not None and stages < 1:
        raise UserError(f"--stages must be at least 1, got {stages}")
    state = load_checkpoint(source)
    weights, optimizer = read_model(source, state)
    rest = {k: v for k, v in state.items() if k not in ("format", "model", "model_parts", "optimizer")}
    output.parent.mkdir(parents=True, exist_ok=True)
    if stages is None:
        write_file(output, {"format": FORMAT, **rest, "model": weights,
                            **({"optimizer": optimizer} if optimizer else {})})
        return output
    saved = config_from_dict(state["config"])
    model = Seq2Seq(saved.model, state["compat"]["vocab.src_size"], state["compat"]["vocab.tgt_size"])
    moments = stage_optimizer_states(model, source, optimizer, stages)
    load_weights(model, source, weights)
    parts = [write_part(output, f"stage-{s}", w, moments[s]) for s, w in enumerate(stage_weights(model, stages))]
    write_file(output, {"format": FORMAT, **rest, "model_parts": parts})
    return output
