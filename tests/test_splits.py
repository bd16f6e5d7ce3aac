"""Splitting an unsplit corpus by a hash of the source sentence."""

from __future__ import annotations

from collections import Counter

from dist_s2s.data.splits import split_of

FRACTIONS = (("train", 0.8), ("valid", 0.1), ("test", 0.1))


def test_the_same_sentence_always_goes_to_the_same_split():
    assert len({split_of(b"I run.", FRACTIONS, 0) for _ in range(5)}) == 1
    assert split_of(b"I  run.\r", FRACTIONS, 0) == split_of(b"I run.", FRACTIONS, 0), "whitespace does not matter"


def test_fractions_are_respected_on_many_sentences():
    counts = Counter(split_of(f"sentence {i}".encode(), FRACTIONS, 0) for i in range(20_000))
    assert abs(counts["train"] / 20_000 - 0.8) < 0.02
    assert abs(counts["test"] / 20_000 - 0.1) < 0.02


def test_the_seed_changes_the_assignment():
    sentences = [f"s{i}".encode() for i in range(200)]
    assert [split_of(s, FRACTIONS, 0) for s in sentences] != [split_of(s, FRACTIONS, 1) for s in sentences]
