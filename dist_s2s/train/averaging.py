"""`dist-s2s average`: the element-wise mean of several checkpoints' weights.

Averaging the last few checkpoints of a run (Junczys-Dowmunt et al. 2016; Vaswani et al. 2017) smooths
the noise of the last updates and typically gives a few tenths of BLEU for nothing; fairseq, OpenNMT-py,
Marian, Sockeye and Joey NMT all offer it. The checkpoints must be of one model: the same shapes and
vocabularies (the `compat` record every checkpoint carries) and the same layout (one file, or the same
number of pipeline stage parts, which are merged on the way). The mean is taken in fp32, and the result
is one single-device file for decoding: it holds no optimizer state or data cursor, so it is never resumed
from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dist_s2s.errors import UserError
from dist_s2s.train.checkpoint import FORMAT, CheckpointDir, load_checkpoint, read_model, write_file


def last_checkpoints(run_dir: Path, count: int) -> list[Path]:
    """The `count` newest checkpoints listed in a run's index, oldest first."""
    if count < 2:
        raise UserError(f"--last must be at least 2, got {count}")
    directory = CheckpointDir(Path(run_dir) / "checkpoints", keep=0)
    listed = directory.listed()
    if len(listed) < count:
        raise UserError(f"{directory.directory} lists {len(listed)} checkpoints, fewer than --last {count} "
                        f"(train.keep_checkpoints keeps that many; raise it for averaging)")
    return listed[-count:]


def layout_of(state: dict[str, Any]) -> str:
    parts = state.get("model_parts")
    return f"{len(parts)} pipeline stage parts" if parts else "one file"


def average(paths: list[Path], output: Path) -> dict[str, Any]:
    """Write the mean of the checkpoints' weights to `output`; what it averaged."""
    paths = [Path(path) for path in paths]
    if len(paths) < 2:
        raise UserError(f"average needs at least two checkpoints, got {len(paths)}")
    first_path, first = paths[0], load_checkpoint(paths[0])
    total: dict[str, torch.Tensor] = {}
    dtypes: dict[str, torch.dtype] = {}
    sources = []
    for path in paths:
        state = first if path == first_path else load_checkpoint(path)
        _check_same_model(first_path, first, path, state)
        weights, _ = read_model(path, state)
        if total and weights.keys() != total.keys():
            raise UserError(f"checkpoint {path} holds other parameters than {first_path}")
        for name, tensor in weights.items():
            if name in total:
                if tensor.shape != total[name].shape:
                    raise UserError(f"checkpoint {path}: {name} has shape {tuple(tensor.shape)}, {first_path} "
                                    f"{tuple(total[name].shape)}")
                total[name] += tensor.float()
            else:
                total[name], dtypes[name] = tensor.float().clone(), tensor.dtype
        sources.append({"file": str(path), "step": state.get("step")})
        last = state
    mean = {name: (tensor / len(paths)).to(dtypes[name]) for name, tensor in total.items()}
    kept = {key: last[key] for key in ("step", "compat", "config", "mlflow_run_id") if key in last}
    output.parent.mkdir(parents=True, exist_ok=True)
    write_file(output, {"format": FORMAT, **kept, "model": mean, "averaged_from": sources})
    return {"output": str(output), "checkpoints": sources}


def _check_same_model(first_path: Path, first: dict[str, Any], path: Path, state: dict[str, Any]) -> None:
    """One line naming the first difference: a model key, a vocabulary checksum, or the layout."""
    for key in sorted(set(first["compat"]) | set(state["compat"])):
        if first["compat"].get(key) != state["compat"].get(key):
            raise UserError(f"cannot average {path} with {first_path}: {key} is {state['compat'].get(key)!r} there "
                            f"and {first['compat'].get(key)!r} here (checkpoints of one model and vocabulary only)")
    if layout_of(state) != layout_of(first):
        raise UserError(f"cannot average {path} ({layout_of(state)}) with {first_path} ({layout_of(first)}): "
                        f"convert one layout to the other first (dist-s2s convert)")
