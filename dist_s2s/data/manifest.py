"""manifest.json: what `prepare` produced, from what, and what it filtered.

Written last and atomically: a directory with a manifest holds complete shards. It holds no
timestamps or absolute paths, so the same inputs and config give the same bytes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dist_s2s.config import DataConfig, config_hash
from dist_s2s.data.shards import sha256_file, write_atomically
from dist_s2s.errors import UserError

MANIFEST = "manifest.json"
FORMAT = "dist-s2s/shards/v1"

LOCATION_KEYS = ("root", "out_dir", "chunk_lines")
"""Data config keys that say where or how fast, not what: they change no output byte."""


def data_config_hash(data: DataConfig) -> str:
    """What the manifest records as `config_hash`: prepared data is current when it matches."""
    return config_hash(data, exclude=LOCATION_KEYS)


def write_manifest(out_dir: Path, manifest: dict[str, Any]) -> Path:
    path = out_dir / MANIFEST
    write_atomically(path, (json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8"))
    return path


def load_manifest(out_dir: Path) -> dict[str, Any]:
    """The manifest of prepared data; a clear error when `prepare` has not run or was cut short."""
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        raise UserError(f"no prepared data: {path} not found (run `dist-s2s prepare` with the same config)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise UserError(f"{path}: corrupt manifest ({error})") from None
    if manifest.get("format") != FORMAT:
        raise UserError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r} (re-run `dist-s2s prepare`)")
    return manifest


def shards_of(manifest: dict[str, Any], split: str) -> list[dict[str, Any]]:
    shards = [shard for shard in manifest["shards"] if shard["split"] == split]
    if not shards:
        known = sorted({shard["split"] for shard in manifest["shards"]})
        raise UserError(f"split {split!r} is not in the prepared data (splits: {', '.join(known)})")
    return shards


def verify_shards(out_dir: Path, manifest: dict[str, Any]) -> None:
    """Check every shard against its recorded sha256; name the first that differs."""
    for shard in manifest["shards"]:
        path = Path(out_dir) / shard["path"]
        if not path.is_file():
            raise UserError(f"shard missing: {path}")
        if sha256_file(path) != shard["sha256"]:
            raise UserError(f"shard corrupt (sha256 differs from manifest): {path}")
