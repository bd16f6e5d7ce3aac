"""The optimizer every schedule steps with, and its state under the model's parameter names.

Plain SGD (the paper's, §3.4) keeps no state. Adam keeps two running means per parameter and a
step count. A checkpoint holds them as it holds the weights: by the single-device model's
parameter names (`exp_avg` / `exp_avg_sq`: {name: tensor}), so a one-device run, a pipeline stage
and `convert` read and write the same thing, and a run resumes exactly under any layout.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dist_s2s.config import OptimConfig
from dist_s2s.errors import UserError
from dist_s2s.model.seq2seq import Seq2Seq, merge_softmax_shards

MOMENTS = {"sgd": (), "adam": ("exp_avg", "exp_avg_sq")}
"""The per-parameter tensors each optimizer keeps (each the shape of its parameter)."""


def build_optimizer(parameters: Iterable[nn.Parameter], optim: OptimConfig) -> torch.optim.Optimizer:
    """`optim.optimizer` over `parameters` at `optim.lr` (the loop sets the scheduled rate before each step)."""
    if optim.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=optim.lr, betas=(optim.adam_beta1, optim.adam_beta2),
                                eps=optim.adam_eps)
    return torch.optim.SGD(parameters, lr=optim.lr, momentum=0.0)


def kind_of(optimizer: torch.optim.Optimizer) -> str:
    return "adam" if isinstance(optimizer, torch.optim.Adam) else "sgd"


def optimizer_state(optimizer: torch.optim.Optimizer, model: Seq2Seq) -> dict[str, Any]:
    """What `optimizer` keeps for its parameters (the model's own objects), under the model's names:
    {"kind", "step", <moment>: {name: tensor}}; the step is None before the first step."""
    kind = kind_of(optimizer)
    state: dict[str, Any] = {"kind": kind, "step": None, **{moment: {} for moment in MOMENTS[kind]}}
    for group in optimizer.param_groups:
        for parameter, name in zip(group["params"], model.names_of(group["params"])):
            kept = optimizer.state.get(parameter)
            if not kept:
                continue
            state["step"] = int(kept["step"])
            for moment in MOMENTS[kind]:
                state[moment][name] = kept[moment].detach().clone()
    return state


def load_optimizer_state(optimizer: torch.optim.Optimizer, model: Seq2Seq, state: dict[str, Any] | None,
                         path: Path) -> None:
    """Give `optimizer` the state a checkpoint (`path`) holds for its parameters, the model's names sharded as
    `model` shards them. None (a checkpoint from before optimizer state was kept) is plain SGD's empty state."""
    kind = kind_of(optimizer)
    saved_kind = (state or {}).get("kind", "sgd")
    if saved_kind != kind:
        raise UserError(f"checkpoint {path} was trained with optim.optimizer={saved_kind}, the config gives "
                        f"optim.optimizer={kind}: resume with the optimizer it was trained with")
    if not MOMENTS[kind] or state["step"] is None:
        return
    moments = {moment: model.shard_softmax(state[moment]) for moment in MOMENTS[kind]}
    restored: dict[int, dict[str, Any]] = {}
    index = 0
    for group in optimizer.param_groups:
        for name in model.names_of(group["params"]):
            if name not in moments[MOMENTS[kind][0]]:
                raise UserError(f"checkpoint {path} holds no optimizer state for {name}: a stage part is lost?")
            restored[index] = {"step": torch.tensor(float(state["step"])),
                               **{moment: moments[moment][name] for moment in MOMENTS[kind]}}
            index += 1
    optimizer.load_state_dict({"state": restored, "param_groups": optimizer.state_dict()["param_groups"]})


def unsharded(state: dict[str, Any] | None) -> dict[str, Any] | None:
    """Optimizer state under a whole model's sharded names → under the unsharded names (the checkpoint's)."""
    if state is None or state["step"] is None:
        return state
    return {key: merge_softmax_shards(value) if isinstance(value, dict) else value for key, value in state.items()}
