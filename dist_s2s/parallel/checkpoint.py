"""Pipeline parameters ↔ the single-device checkpoint format.

Every stage's parameters are the model's own parameter objects (`stages.py` shares them), so the
model's names identify them; merging the stages and un-sharding the softmax gives the format
`train/checkpoint.py` writes, which loads into any stage or shard count.
"""

from __future__ import annotations

import torch

from dist_s2s.errors import UserError
from dist_s2s.model.seq2seq import Seq2Seq, merge_softmax_shards


def stage_state(engine, model: Seq2Seq) -> dict[str, torch.Tensor]:
    """This stage's parameters, under the single-device model's names."""
    names = {id(p): name for name, p in model.named_parameters()}
    return {names[id(p)]: p.detach().clone() for p in engine.module.parameters()}


def merge_stage_states(states: list[dict[str, torch.Tensor]], model: Seq2Seq) -> dict[str, torch.Tensor]:
    """The stages' parameters joined into the unsharded single-device format, checked complete."""
    merged: dict[str, torch.Tensor] = {}
    for index, state in enumerate(states):
        twice = sorted(set(merged) & set(state))
        if twice:
            raise UserError(f"stage {index} holds {twice[0]}, already held by an earlier stage")
        merged.update(state)
    missing = sorted(set(model.state_dict()) - set(merged))
    if missing:
        raise UserError(f"the stages hold no {missing[0]} (and {len(missing) - 1} more): a stage is missing")
    return merge_softmax_shards(merged)
