"""manifest.json: what `prepare` produced, from what, and what it filtered.

Written last and atomically: a directory with a manifest holds complete shards. It holds no
timestamps or absolute paths, so the same inputs and config give the same bytes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dist_s2s.config import DataConfig, config_from_dict, config_hash
from dist_s2s.data.shards import sha256_file, write_atomically
from dist_s2s.data.subwords import CodecFiles
from dist_s2s.errors import UserError

MANIFEST = "manifest.json"
FORMAT = "dist-s2s/shards/v1"

LOCATION_KEYS = ("root", "out_dir", "chunk_lines")
"""Data config keys that say where or how fast, not what: they change no output byte."""


def data_config_hash(data: DataConfig) -> str:
    """What the manifest records as `config_hash`: prepared data is current when it matches."""
    return config_hash(data, exclude=LOCATION_KEYS)


@dataclass(frozen=True)
class VocabFiles:
    """The two vocabularies `prepare` built: sizes (specials included), files in out_dir, checksums."""

    src_size: int
    tgt_size: int
    src_file: str
    tgt_file: str
    src_sha256: str
    tgt_sha256: str
    specials: list[str]
    kind: str = "words"
    """`words`, or `sentencepiece` (then the models below turn Moses tokens into the vocabularies' pieces)."""
    src_model: str | None = None
    tgt_model: str | None = None
    src_model_sha256: str | None = None
    tgt_model_sha256: str | None = None

    def codec_files(self, side: str) -> CodecFiles:
        """`src` or `tgt`: where that side's codec lives and what its model must hash to."""
        return CodecFiles(getattr(self, f"{side}_file"), getattr(self, f"{side}_model"),
                          getattr(self, f"{side}_model_sha256"))

    def files(self) -> list[str]:
        """Every vocabulary and model file, relative to data.out_dir."""
        return [name for name in (self.src_file, self.tgt_file, self.src_model, self.tgt_model) if name]


@dataclass(frozen=True)
class ShardEntry:
    """One Arrow shard: which split and length bucket, where (relative to out_dir), how big, its sha256."""

    split: str
    bucket: int
    path: str
    rows: int
    sha256: str
    src_words: int
    tgt_words: int


@dataclass(frozen=True)
class Manifest:
    """manifest.json as typed fields: the one place its keys are spelled."""

    format: str
    config_hash: str
    """`data_config_hash` of the data config that made these shards: they are current when it matches."""
    config: dict[str, Any]
    """That data config's values, less where things live (`LOCATION_KEYS`)."""
    versions: dict[str, str]
    inputs: list[dict[str, Any]]
    """Each corpus file read: path, lines, bytes, sha256."""
    vocab: VocabFiles
    splits: dict[str, dict[str, int]]
    """Per split: rows_in, rows (kept), src/tgt words and <unk>s."""
    filtered: dict[str, dict[str, int]]
    """Per split: rows dropped, by reason (rows_in = rows + Σ filtered, checked when written)."""
    normalized: dict[str, int]
    """Line endings normalized, by kind (crlf, lone_cr)."""
    bucket_boundaries: list[int]
    shards: list[ShardEntry]

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Manifest:
        return cls(**{**raw, "vocab": VocabFiles(**raw["vocab"]), "shards": [ShardEntry(**s) for s in raw["shards"]]})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def data_config(self) -> DataConfig:
        """The data config the shards and vocabularies were made with (tokenization, case, reversal)."""
        return config_from_dict({"data": self.config}).data

    def shards_of(self, split: str) -> list[ShardEntry]:
        shards = [shard for shard in self.shards if shard.split == split]
        if not shards:
            known = sorted({shard.split for shard in self.shards})
            raise UserError(f"split {split!r} is not in the prepared data (splits: {', '.join(known)})")
        return shards

    def filtered_rows(self, split: str) -> int:
        return sum(self.filtered.get(split, {}).values())


def write_manifest(out_dir: Path, manifest: Manifest) -> Path:
    path = out_dir / MANIFEST
    text = json.dumps(manifest.to_dict(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    write_atomically(path, text.encode("utf-8"))
    return path


def load_manifest(out_dir: Path) -> Manifest:
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
    try:
        return Manifest.from_dict(manifest)
    except (KeyError, TypeError) as error:
        raise UserError(f"{path}: corrupt manifest ({error}; re-run `dist-s2s prepare`)") from None


def current_manifest(data: DataConfig) -> Manifest | None:
    """The manifest in data.out_dir if it was prepared with this data config, else None."""
    out_dir = Path(data.out_dir)
    if not (out_dir / MANIFEST).is_file():
        return None
    manifest = load_manifest(out_dir)
    return manifest if manifest.config_hash == data_config_hash(data) else None


def verify_shards(out_dir: Path, manifest: Manifest) -> None:
    """Check every shard against its recorded sha256; name the first that differs."""
    for shard in manifest.shards:
        path = Path(out_dir) / shard.path
        if not path.is_file():
            raise UserError(f"shard missing: {path}")
        if sha256_file(path) != shard.sha256:
            raise UserError(f"shard corrupt (sha256 differs from manifest): {path}")
