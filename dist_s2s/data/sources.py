"""The raw inputs of `prepare`: which file pairs feed which splits, and how they are cut into chunks.

Each input file is scanned once (line count, sha256, byte offset of every chunk's first line)
so that a Ray task can read the same line range from both sides of a pair: two unordered
datasets could misalign the sentences (see docs/platform.md on `ray.data.read_text`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from dist_s2s.config import DataConfig
from dist_s2s.errors import UserError

_BLOCK = 1 << 20


@dataclass(frozen=True)
class InputPair:
    """Aligned source/target files of one corpus, routed to one split or divided among several."""

    corpus: str
    prefix: str
    """File prefix relative to data.root, e.g. `multi30k/train`."""
    src_path: Path
    tgt_path: Path
    split: str | None
    """The split every pair goes to, or None when `split_fractions` divides them."""
    split_fractions: tuple[tuple[str, float], ...]
    pretokenized: bool


@dataclass(frozen=True)
class FileScan:
    lines: int
    bytes: int
    sha256: str
    chunk_offsets: tuple[int, ...]
    """Byte offset of line 0, chunk_lines, 2·chunk_lines, …"""


@dataclass(frozen=True)
class LineRange:
    """Lines [first_line, first_line + num_lines) of one input pair, 0-based, with their byte ranges."""

    pair_index: int
    chunk_index: int
    first_line: int
    num_lines: int
    src_range: tuple[int, int]
    tgt_range: tuple[int, int]


def input_pairs(config: DataConfig) -> list[InputPair]:
    """The file pairs the config names, checked to exist."""
    if not config.corpora:
        raise UserError("config key data.corpora is empty: name at least one corpus to prepare")
    root = Path(config.root)
    if not root.is_dir():
        raise UserError(f"data root not found: {root.resolve()} (set --data.root, or fill it with `dist-s2s download`)")
    pairs = []
    for corpus in config.corpora:
        routes: list[tuple[str, str | None]] = (
            [(prefix, split) for split, prefix in corpus.splits.items()] if corpus.splits else [(corpus.file, None)]
        )
        for prefix, split in routes:
            pair = InputPair(
                corpus=corpus.name or prefix.split("/")[0],
                prefix=prefix,
                src_path=root / f"{prefix}.{config.src_lang}",
                tgt_path=root / f"{prefix}.{config.tgt_lang}",
                split=split,
                split_fractions=tuple(corpus.split_fractions.items()) if split is None else (),
                pretokenized=corpus.pretokenized,
            )
            for path in (pair.src_path, pair.tgt_path):
                if not path.is_file():
                    raise UserError(f"input file not found: {path} (corpus {pair.corpus}, data.root={root})")
            pairs.append(pair)
    return pairs


def scan_file(path: Path, chunk_lines: int) -> FileScan:
    """Count lines, hash, and find where each chunk starts, in one streaming pass."""
    digest = hashlib.sha256()
    offsets = [0]
    lines = 0
    position = 0
    last_byte = b""
    with open(path, "rb") as handle:
        while block := handle.read(_BLOCK):
            digest.update(block)
            newlines = block.count(b"\n")
            next_boundary = len(offsets) * chunk_lines
            search_from = 0
            while lines + newlines >= next_boundary and newlines:
                # Line number `next_boundary` starts right after the newline ending line next_boundary-1.
                needed = next_boundary - lines
                index = search_from - 1
                for _ in range(needed):
                    index = block.index(b"\n", index + 1)
                offsets.append(position + index + 1)
                newlines -= needed
                lines += needed
                search_from = index + 1
                next_boundary += chunk_lines
            lines += newlines
            position += len(block)
            last_byte = block[-1:]
    if position and last_byte != b"\n":
        lines += 1  # a last line without a newline is still a line
    if offsets[-1] >= position and len(offsets) > 1:
        offsets.pop()  # the file ends exactly at a chunk boundary
    return FileScan(lines=lines, bytes=position, sha256=digest.hexdigest(), chunk_offsets=tuple(offsets))


def check_aligned(pair: InputPair, src: FileScan, tgt: FileScan) -> None:
    """Refuse empty or misaligned pairs, naming both files and counts."""
    for path, scan in ((pair.src_path, src), (pair.tgt_path, tgt)):
        if scan.lines == 0:
            raise UserError(f"input file is empty: {path}")
    if src.lines != tgt.lines:
        raise UserError(
            f"misaligned corpus {pair.corpus}: {pair.src_path} has {src.lines} lines "
            f"but {pair.tgt_path} has {tgt.lines} lines"
        )


def chunks(pair_index: int, src: FileScan, tgt: FileScan, chunk_lines: int) -> list[LineRange]:
    """Cut an aligned pair into line ranges of at most `chunk_lines`."""
    result = []
    for index, (src_start, tgt_start) in enumerate(zip(src.chunk_offsets, tgt.chunk_offsets)):
        first = index * chunk_lines
        last = index + 1 == len(src.chunk_offsets)
        result.append(LineRange(
            pair_index=pair_index,
            chunk_index=index,
            first_line=first,
            num_lines=(src.lines - first) if last else chunk_lines,
            src_range=(src_start, src.bytes if last else src.chunk_offsets[index + 1]),
            tgt_range=(tgt_start, tgt.bytes if last else tgt.chunk_offsets[index + 1]),
        ))
    return result


def read_lines(path: Path, byte_range: tuple[int, int], expected: int) -> list[bytes]:
    """The raw lines of a byte range, newline removed (only `\\n` ends a line; `\\r` is handled later)."""
    start, end = byte_range
    with open(path, "rb") as handle:
        handle.seek(start)
        data = handle.read(end - start)
    lines = data.split(b"\n")
    if data.endswith(b"\n"):
        lines.pop()
    if len(lines) != expected:
        raise UserError(f"{path}: changed while being read (expected {expected} lines at byte {start}, got "
                        f"{len(lines)})")
    return lines
