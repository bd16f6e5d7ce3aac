"""Checkpoints: the trainer's whole state, written atomically, verified when read.

`run_dir/checkpoints/step-NNNNNNNN.pt` files and an `index.json` listing each with its sha256.
A file is renamed into place only when complete, and the index names it only after that, so a
run killed mid-write leaves the previous checkpoint as the latest. Files load with
`torch.load(weights_only=True)`: tensors and plain data only, never pickled code.

The model's weights are either in the file (`model`: the unsharded single-device format) or,
from a pipeline, in one part file per stage beside it (`model_parts`: file names and sha256s,
`step-NNNNNNNN.stage-K.pt`), each written by its own stage. `model_weights` reads both the same.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from dist_s2s.config import ModelConfig
from dist_s2s.data.manifest import Manifest
from dist_s2s.data.shards import sha256_file, write_atomically
from dist_s2s.errors import UserError
from dist_s2s.model.seq2seq import Seq2Seq, merge_softmax_shards
from dist_s2s.train.optimizer import unsharded

FORMAT = "dist-s2s/checkpoint/v1"
PART_FORMAT = "dist-s2s/checkpoint-part/v1"
INDEX = "index.json"


def write_file(path: Path, payload: dict[str, Any]) -> str:
    """torch.save to a temporary file, fsync, rename into place; the file's sha256.

    A failed write (a full disk) removes its temporary file and names the checkpoint: the
    index still lists only complete checkpoints, so the previous one stays the latest."""
    temporary = path.with_name(path.name + f".{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
    except (OSError, RuntimeError) as error:  # torch.save reports a failed write as RuntimeError
        temporary.unlink(missing_ok=True)
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error).splitlines()[0]
        raise UserError(f"cannot write checkpoint {path}: {reason}; the previous checkpoints in {path.parent} "
                        f"are untouched (free space, then resume with --train.resume=true)") from None
    digest = sha256_file(temporary)
    os.replace(temporary, path)
    return digest


def write_part(main: Path, name: str, weights: dict[str, torch.Tensor],
               optimizer: dict[str, Any] | None = None) -> dict[str, str]:
    """One stage's weights (and its optimizer state, `train.optimizer.optimizer_state`) beside the checkpoint
    file `main` will be; the entry `main` lists it by."""
    path = main.with_name(f"{main.stem}.{name}.pt")
    payload = {"format": PART_FORMAT, "weights": weights, **({"optimizer": optimizer} if optimizer else {})}
    return {"file": path.name, "sha256": write_file(path, payload)}


def step_of(path: Path) -> int | None:
    """The step a checkpoint file was written at (`step-00002724.pt`; the inverse of CheckpointDir.path_of),
    None for a file of another name."""
    found = re.fullmatch(r"step-(\d+)", Path(path).stem)
    return int(found.group(1)) if found else None


class CheckpointDir:
    """`index.json` lists the checkpoints kept, oldest first; with validation scoring, also every checkpoint's
    score (`evaluations`, never pruned: resume replays them) and, with `keep_best`, the best one, which
    rotation never deletes."""

    def __init__(self, directory: Path, keep: int, keep_best: bool = False):
        self.directory = Path(directory)
        self.keep = keep
        self.keep_best = keep_best

    def _read(self) -> dict[str, Any]:
        path = self.directory / INDEX
        if not path.is_file():
            return {"checkpoints": []}
        try:
            index = json.loads(path.read_text())
            index["checkpoints"]  # noqa: B018 - the one key every index has
            return index
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise UserError(f"checkpoint index {path} is corrupt: {error}") from None

    def _index(self) -> list[dict[str, Any]]:
        return self._read()["checkpoints"]

    def listed(self) -> list[Path]:
        """Every checkpoint the index lists, oldest first."""
        return [self.directory / entry["file"] for entry in self._index()]

    def latest(self) -> Path | None:
        entries = self._index()
        return self.directory / entries[-1]["file"] if entries else None

    def best(self) -> Path | None:
        """The best checkpoint by the run's train.best_metric (None unless it ran with train.keep_best)."""
        best = self._read().get("best")
        return self.directory / best["file"] if best else None

    def evaluations(self) -> list[dict[str, Any]]:
        """Every checkpoint's validation score, {"step", "metric", "value"}, in step order."""
        return self._read().get("evaluations", [])

    def path_of(self, step: int) -> Path:
        return self.directory / f"step-{step:08d}.pt"

    def save_part(self, step: int, name: str, weights: dict[str, torch.Tensor],
                  optimizer: dict[str, Any] | None = None) -> dict[str, str]:
        """A pipeline stage's share of step's checkpoint, written before `save` lists the step."""
        self.directory.mkdir(parents=True, exist_ok=True)
        return write_part(self.path_of(step), name, weights, optimizer)

    def save(self, step: int, state: dict[str, Any],
             evaluate: Callable[[Path], dict[str, Any]] | None = None) -> Path:
        """Write step's checkpoint; score it (`evaluate(path)` → {"metric", "value", "best"}) before the index
        lists it, so that a listed checkpoint always has its score; list it; then drop the oldest (and their
        parts) beyond `keep`, sparing the best."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.path_of(step)
        digest = write_file(path, {"format": FORMAT, "step": step, **state})
        evaluation = evaluate(path) if evaluate else None
        index = self._read()
        entry = {"step": step, "file": path.name, "sha256": digest}
        entries = [e for e in index["checkpoints"] if e["file"] != path.name] + [entry]
        kept, dropped = entries[-self.keep:], entries[:-self.keep]
        index["checkpoints"] = kept
        if evaluation is not None:
            index["evaluations"] = [e for e in index.get("evaluations", []) if e["step"] < step] + [
                {"step": step, "metric": evaluation["metric"], "value": evaluation["value"]}]
            if self.keep_best and evaluation["best"]:
                previous = index.get("best")
                index["best"] = {**entry, "metric": evaluation["metric"], "value": evaluation["value"]}
                if previous and previous["file"] not in {e["file"] for e in kept}:
                    dropped.append(previous)
        best_file = index.get("best", {}).get("file")
        write_atomically(self.directory / INDEX, (json.dumps(index, indent=2) + "\n").encode())
        for old in dropped:
            if old["file"] == best_file or old["file"] == path.name:
                continue
            for file in self.directory.glob(Path(old["file"]).stem + ".*"):
                file.unlink(missing_ok=True)
        return path

    def expected_sha256(self, path: Path) -> str | None:
        index = self._read()
        listed = [*index["checkpoints"], *([index["best"]] if index.get("best") else [])]
        return next((e["sha256"] for e in listed if e["file"] == Path(path).name), None)

    def discard_partial(self) -> list[str]:
        """Remove the temporary files of writes a killed run left unfinished; their names.
        (The index never listed them, so nothing ever loaded them.)"""
        leftovers = sorted(self.directory.glob("*.tmp")) if self.directory.is_dir() else []
        for path in leftovers:
            path.unlink(missing_ok=True)
        return [path.name for path in leftovers]


def load_checkpoint(path: Path, expected_sha256: str | None = None, kind: str = FORMAT) -> dict[str, Any]:
    """Read a checkpoint; a clear error naming the file when it is missing, damaged or unsafe."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    if expected_sha256 and sha256_file(path) != expected_sha256:
        raise UserError(f"checkpoint {path} is corrupt: its sha256 differs from the one recorded in {INDEX}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for damaged files
        if "Weights only load failed" in str(error):
            raise UserError(f"checkpoint {path} holds pickled Python objects; refusing to load it "
                            f"(only tensors and plain data are accepted)") from None
        raise UserError(f"checkpoint {path} is corrupt or truncated ({type(error).__name__}: {error})") from None
    if not isinstance(state, dict) or state.get("format") != kind:
        raise UserError(f"{path} is not a {kind} file (format "
                        f"{state.get('format') if isinstance(state, dict) else None!r})")
    return state


def model_weights(path: Path, state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """A checkpoint's weights in the unsharded single-device format, its stage parts merged if it has them."""
    return read_model(path, state)[0]


def read_model(path: Path, state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """A checkpoint's weights and optimizer state (None when it holds none), both under the unsharded
    single-device names, its stage parts merged if it has them."""
    if "model" in state:
        return state["model"], state.get("optimizer")
    weights: dict[str, torch.Tensor] = {}
    optimizer: dict[str, Any] | None = None
    for part in state["model_parts"]:
        payload = load_checkpoint(Path(path).parent / part["file"], part["sha256"], kind=PART_FORMAT)
        twice = sorted(set(weights) & set(payload["weights"]))
        if twice:
            raise UserError(f"checkpoint part {part['file']} holds {twice[0]}, already held by an earlier part")
        weights.update(payload["weights"])
        if "optimizer" in payload:
            optimizer = _merge_optimizer_parts(optimizer, payload["optimizer"])
    try:
        return merge_softmax_shards(weights), unsharded(optimizer)
    except KeyError as missing:
        raise UserError(f"checkpoint {path} has no {missing.args[0]}: a stage part is lost?") from None


def _merge_optimizer_parts(merged: dict[str, Any] | None, part: dict[str, Any]) -> dict[str, Any]:
    if merged is None:
        return {key: dict(value) if isinstance(value, dict) else value for key, value in part.items()}
    for key, value in part.items():
        if isinstance(value, dict):
            merged[key].update(value)
    return merged


def load_weights(model: Seq2Seq, path: Path, weights: dict[str, torch.Tensor]) -> None:
    """Load unsharded weights into `model` (any shard count); a missing or misshapen tensor names itself."""
    expected = {k for k in model.state_dict() if not k.startswith("softmax.")} | {"softmax.weight", "softmax.bias"}
    missing = sorted(expected - set(weights))
    if missing:
        raise UserError(f"checkpoint {path} has no {missing[0]} ({len(missing)} tensors missing: a stage part "
                        "is lost?)")
    try:
        model.load_unsharded_state_dict(weights)
    except RuntimeError as error:
        raise UserError(f"checkpoint {path} does not fit the model: {str(error).splitlines()[-1].strip()}") from None


def check_compatible(path: Path, saved: dict[str, Any], current: dict[str, Any]) -> None:
    """Refuse a checkpoint trained with another vocabulary or model shape, naming the key (a checkpoint from
    before a key existed holds that key's default)."""
    for key, value in current.items():
        if saved.get(key, ABSENT_MEANS.get(key)) != value:
            raise UserError(f"checkpoint {path} does not fit this config: it was trained with "
                            f"{key}={saved.get(key, ABSENT_MEANS.get(key))!r}, the config gives {key}={value!r}")


ABSENT_MEANS = {"model.attention": "none"}
"""What a compatibility key a checkpoint does not hold stood for when it was written."""


def vocabulary_compatibility(manifest: Manifest) -> dict[str, Any]:
    """What a checkpoint must share with prepared data to read and write its words (decoding needs no more)."""
    vocab = manifest.vocab
    return {"vocab.src_size": vocab.src_size, "vocab.tgt_size": vocab.tgt_size,
            "vocab.src_sha256": vocab.src_sha256, "vocab.tgt_sha256": vocab.tgt_sha256}


def model_compatibility(model: ModelConfig, manifest: Manifest) -> dict[str, Any]:
    """What a checkpoint must share with the config to be loaded into its model."""
    return {
        **vocabulary_compatibility(manifest),
        "model.embedding_dim": model.embedding_dim, "model.hidden_size": model.hidden_size,
        "model.num_layers": model.num_layers, "model.attention": model.attention,
    }
