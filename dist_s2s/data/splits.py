"""Deterministic train/valid/test split of a corpus that has none (Tatoeba).

A pair goes to the split chosen by a salted hash of its source sentence, so every
translation of one English sentence lands in the same split (Tatoeba repeats English
sentences: a random split by pair would leak test sentences into training), the
assignment needs no pass over the whole corpus, and it never changes when lines are
added or reordered.
"""

from __future__ import annotations

import hashlib


def split_of(source_line: bytes, fractions: tuple[tuple[str, float], ...], seed: int) -> str:
    """The split of a source sentence; whitespace differences do not change it."""
    key = b" ".join(source_line.split())
    digest = hashlib.blake2b(key, digest_size=8, salt=seed.to_bytes(8, "little")).digest()
    point = int.from_bytes(digest, "little") / 2**64
    cumulative = 0.0
    for split, fraction in fractions:
        cumulative += fraction
        if point < cumulative:
            return split
    return fractions[-1][0]
