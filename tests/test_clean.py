"""Cleaning a line pair: what is normalized, what is dropped and why, and strict mode."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from conftest import SHARED_DATA
from sacremoses import MosesPunctNormalizer, MosesTokenizer

from dist_s2s.data.clean import (
    CRLF,
    EMPTY_SOURCE,
    EMPTY_TARGET,
    INVALID_UTF8,
    LONE_CR,
    TOO_LONG,
    PairCleaner,
    TokenizedPair,
)
from dist_s2s.data.tokenize import tokenize
from dist_s2s.errors import UserError


def cleaner(strict=False, pretokenized=False, lowercase=False) -> PairCleaner:
    return PairCleaner(Path("c.en"), Path("c.fr"), "en", "fr", lowercase, pretokenized, strict, Counter())


def test_a_clean_pair_is_tokenized_with_moses():
    result = cleaner().clean(b"A man's dog, running.", b"Le chien d'un homme court.", 1, 0)
    assert isinstance(result, TokenizedPair)
    assert result.src_tokens == ["A", "man", "'s", "dog", ",", "running", "."]
    assert result.tgt_tokens == ["Le", "chien", "d'", "un", "homme", "court", "."]


def test_typographic_spaces_fold_into_plain_spaces():
    result = cleaner().clean(b"Go!", "Va\u202f!\u00a0Vite".encode(), 1, 0)
    assert result.tgt_tokens == ["Va", "!", "Vite"]
    assert result.tgt_raw == "Va\u202f!\u00a0Vite", "the raw reference keeps the text as written"


def test_crlf_and_lone_cr_are_normalized_and_counted():
    pair_cleaner = cleaner()
    result = pair_cleaner.clean(b"one\r", b"un\rdeux\r", 1, 0)
    assert result.src_tokens == ["one"] and result.tgt_tokens == ["un", "deux"]
    assert result.src_raw == "one"
    assert pair_cleaner.normalized == Counter({CRLF: 2, LONE_CR: 1})


@pytest.mark.parametrize("src, tgt, reason", [
    (b"\xff\xfe bad", b"ok", INVALID_UTF8),
    (b"ok", b"caf\xe9", INVALID_UTF8),
    (b"", b"texte", EMPTY_SOURCE),
    (b"   \t ", b"texte", EMPTY_SOURCE),
    (b"text", b"\xc2\xa0", EMPTY_TARGET),
    (b"one two three four", b"un", TOO_LONG),
])
def test_unusable_pairs_return_their_reason(src, tgt, reason):
    assert cleaner().clean(src, tgt, 1, max_len=3) == reason


def test_a_100k_character_line_is_too_long_not_a_crash():
    assert cleaner().clean(b"word " * 20_000, b"mot", 1, max_len=80) == TOO_LONG


def test_max_len_zero_keeps_long_pairs():
    assert isinstance(cleaner().clean(b"a b c d e", b"a", 1, max_len=0), TokenizedPair)


def test_strict_mode_names_file_and_line_for_invalid_utf8():
    with pytest.raises(UserError, match=r"c\.fr:42: invalid UTF-8 at byte 3"):
        cleaner(strict=True).clean(b"ok", b"caf\xe9", 42, 0)


def test_strict_mode_names_file_and_line_for_an_empty_side():
    with pytest.raises(UserError, match=r"c\.en:7: empty line"):
        cleaner(strict=True).clean(b"", b"texte", 7, 0)


def test_pretokenized_html_escaped_lines_are_restored_before_tokenizing():
    result = cleaner(pretokenized=True).clean(b"Spain &apos;s view", b"l&apos; homme", 1, 0)
    assert result.src_tokens == ["Spain", "'s", "view"]
    assert result.tgt_tokens == ["l'", "homme"]


def test_lowercase_option():
    assert cleaner(lowercase=True).clean(b"The Dog", b"Le Chien", 1, 0).src_tokens == ["the", "dog"]


@pytest.mark.parametrize("corpus", ["wmt_newstest_2008_2011/train", "europarl_v7_sample_tok/train.tok"])
def test_the_faster_moses_tokenizer_splits_news_exactly_as_sacremoses_does(corpus):
    """`tokenize._MosesTokenizer` answers sacremoses' two character-class tests from prebuilt sets;
    every token of 3,000 news / parliament lines a side (many ending in abbreviations) is the same."""
    for lang in ("en", "fr"):
        lines = (SHARED_DATA / f"{corpus}.{lang}").read_text(encoding="utf-8").splitlines()[:3000]
        reference, normalizer = MosesTokenizer(lang), MosesPunctNormalizer(lang)
        for line in lines:
            assert tokenize(line, lang) == reference.tokenize(normalizer.normalize(line), escape=False), line
