"""Checkpoints: the trainer's whole state, written atomically, verified when read.

`run_dir/checkpoints/step-NNNNNNNN.pt` files and an `index.json` listing each with its sha256.
A file is renamed into place only when complete, and the index names it only after that, so a
run killed mid-write leaves the previous checkpoint as the latest. Files load with
`torch.load(weights_only=True)`: tensors and plain data only, never pickled code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from dist_s2s.data.shards import sha256_file, write_atomically
from dist_s2s.errors import UserError

FORMAT = "dist-s2s/checkpoint/v1"
INDEX = "index.json"


class CheckpointDir:
    def __init__(self, directory: Path, keep: int):
        self.directory = Path(directory)
        self.keep = keep

    def _index(self) -> list[dict[str, Any]]:
        path = self.directory / INDEX
        if not path.is_file():
            return []
        try:
            return json.loads(path.read_text())["checkpoints"]
        except (json.JSONDecodeError, KeyError) as error:
            raise UserError(f"checkpoint index {path} is corrupt: {error}") from None

    def latest(self) -> Path | None:
        entries = self._index()
        return self.directory / entries[-1]["file"] if entries else None

    def save(self, step: int, state: dict[str, Any]) -> Path:
        """Write step's checkpoint, then list it, then drop the oldest beyond `keep`."""
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"step-{step:08d}.pt"
        path = self.directory / name
        temporary = path.with_name(name + f".{os.getpid()}.tmp")
        with open(temporary, "wb") as handle:
            torch.save({"format": FORMAT, "step": step, **state}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        digest = sha256_file(temporary)
        os.replace(temporary, path)
        entries = [e for e in self._index() if e["file"] != name] + [{"step": step, "file": name, "sha256": digest}]
        kept, dropped = entries[-self.keep:], entries[:-self.keep]
        write_atomically(self.directory / INDEX, (json.dumps({"checkpoints": kept}, indent=2) + "\n").encode())
        for entry in dropped:
            (self.directory / entry["file"]).unlink(missing_ok=True)
        return path

    def expected_sha256(self, path: Path) -> str | None:
        return next((e["sha256"] for e in self._index() if e["file"] == Path(path).name), None)


def load_checkpoint(path: Path, expected_sha256: str | None = None) -> dict[str, Any]:
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
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path} is not a dist-s2s checkpoint (format {state.get('format') if isinstance(state, dict) else None!r})")
    return state


def check_compatible(path: Path, saved: dict[str, Any], current: dict[str, Any]) -> None:
    """Refuse a checkpoint trained with another vocabulary or model shape, naming the key."""
    for key, value in current.items():
        if saved.get(key) != value:
            raise UserError(f"checkpoint {path} does not fit this config: it was trained with {key}={saved.get(key)!r}, "
                            f"the config gives {key}={value!r}")
