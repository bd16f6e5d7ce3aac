"""Word vocabularies: the most frequent words of the training split, the rest mapped to <unk>.

Paper §3.1: 160,000 source and 80,000 target words, every other word replaced by UNK.
Our sizes count the four specials, so the 80,000-way softmax splits into 4 × 20,000 (§3.5).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from dist_s2s.errors import UserError

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "</s>"
SPECIALS = (PAD, UNK, BOS, EOS)
PAD_ID, UNK_ID, BOS_ID, EOS_ID = range(4)


class Vocab:
    """Token ↔ id; ids 0–3 are <pad> <unk> <s> </s>, then words by descending frequency."""

    def __init__(self, words: list[str], counts: list[int]):
        self.tokens = list(SPECIALS) + list(words)
        self.counts = [0] * len(SPECIALS) + list(counts)
        self.ids = {token: index for index, token in enumerate(self.tokens)}
        if len(self.ids) != len(self.tokens):
            raise ValueError("vocabulary has duplicate tokens")

    @classmethod
    def build(cls, counts: Counter, size: int) -> Vocab:
        """Top `size - 4` words; ties broken alphabetically so the result never depends on order."""
        ranked = sorted(((-count, word) for word, count in counts.items() if word not in SPECIALS))
        top = ranked[: max(0, size - len(SPECIALS))]
        return cls([word for _, word in top], [-negative for negative, _ in top])

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, tokens: list[str]) -> list[int]:
        return [self.ids.get(token, UNK_ID) for token in tokens]

    def decode(self, ids: list[int]) -> list[str]:
        return [self.tokens[i] for i in ids]

    def pieces(self, ids: list[int]) -> list[str]:
        """Each id's token (a word here: `subwords.SubwordCodec` gives subword pieces)."""
        return self.decode(ids)

    def save(self, path: Path) -> None:
        """One `token<TAB>count` line per id, in id order."""
        lines = "".join(f"{token}\t{count}\n" for token, count in zip(self.tokens, self.counts))
        path.write_text(lines, encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> Vocab:
        if not path.is_file():
            raise UserError(f"vocabulary file not found: {path}")
        words, counts = [], []
        for number, line in enumerate(path.read_text(encoding="utf-8").split("\n")[:-1], start=1):
            token, _, count = line.rpartition("\t")
            if not token or not count.isdigit():
                raise UserError(f"{path}:{number}: expected `token<TAB>count`, got {line[:80]!r}")
            if number <= len(SPECIALS):
                if token != SPECIALS[number - 1]:
                    raise UserError(f"{path}:{number}: expected special token {SPECIALS[number - 1]}, got {token!r}")
                continue
            words.append(token)
            counts.append(int(count))
        return cls(words, counts)
