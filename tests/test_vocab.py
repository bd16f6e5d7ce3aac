"""Vocabularies: top-K words by frequency after the four specials, stable, saved as text."""

from __future__ import annotations

from collections import Counter

import pytest

from dist_s2s.data.vocab import BOS_ID, EOS_ID, PAD_ID, SPECIALS, UNK_ID, Vocab
from dist_s2s.errors import UserError


def test_specials_come_first_in_a_fixed_order():
    vocab = Vocab.build(Counter({"a": 3}), 10)
    assert vocab.tokens[:4] == list(SPECIALS) == ["<pad>", "<unk>", "<s>", "</s>"]
    assert (PAD_ID, UNK_ID, BOS_ID, EOS_ID) == (0, 1, 2, 3)


def test_size_counts_the_specials_and_keeps_the_most_frequent_words():
    vocab = Vocab.build(Counter({"the": 9, "cat": 5, "sat": 5, "mat": 1}), size=6)
    assert len(vocab) == 6
    assert vocab.tokens[4:] == ["the", "cat"], "ties are broken alphabetically"


def test_unknown_words_map_to_unk():
    vocab = Vocab.build(Counter({"the": 2}), 10)
    assert vocab.encode(["the", "zebra"]) == [4, UNK_ID]
    assert vocab.decode([4, UNK_ID]) == ["the", "<unk>"]


def test_build_does_not_depend_on_counting_order():
    forward = Counter({"b": 1, "a": 1, "c": 2})
    backward = Counter(dict(reversed(list(forward.items()))))
    assert Vocab.build(forward, 6).tokens == Vocab.build(backward, 6).tokens


def test_save_and_load_round_trip(tmp_path):
    vocab = Vocab.build(Counter({"l'": 4, "homme": 2, "état-major": 1}), 10)
    vocab.save(tmp_path / "v.txt")
    loaded = Vocab.load(tmp_path / "v.txt")
    assert loaded.tokens == vocab.tokens and loaded.counts == vocab.counts


def test_malformed_vocab_file_names_the_line(tmp_path):
    path = tmp_path / "v.txt"
    path.write_text("<pad>\t0\n<unk>\t0\n<s>\t0\n</s>\t0\nword without count\n")
    with pytest.raises(UserError, match=r"v\.txt:5: expected `token<TAB>count`"):
        Vocab.load(path)


def test_missing_vocab_file_is_named(tmp_path):
    with pytest.raises(UserError, match="vocabulary file not found"):
        Vocab.load(tmp_path / "absent.txt")
