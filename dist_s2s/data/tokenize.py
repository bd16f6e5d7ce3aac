"""Word-level tokenization with sacremoses, the Moses scripts of the paper's WMT'14 setup."""

from __future__ import annotations

import functools

from sacremoses import MosesDetokenizer, MosesPunctNormalizer, MosesTokenizer


class _MosesTokenizer(MosesTokenizer):
    """sacremoses' tokenizer with its two character-class tests answered from sets built once.

    sacremoses 0.2 builds a set of every lowercase (or alphabetic) Unicode character on each call
    of `islower` / `isanyalpha`, which runs for every token that ends in a full stop: half of all
    tokenizing time on news-length sentences. Same answers (tested), about twice the speed.
    """

    _lower = frozenset(MosesTokenizer.IsLower)
    _alpha = frozenset(MosesTokenizer.IsAlpha)

    def islower(self, text: str) -> bool:
        return self._lower.issuperset(text)

    def isanyalpha(self, text: str) -> bool:
        return not self._alpha.isdisjoint(text)


@functools.cache
def _tools(lang: str) -> tuple[MosesPunctNormalizer, MosesTokenizer, MosesDetokenizer]:
    return MosesPunctNormalizer(lang), _MosesTokenizer(lang), MosesDetokenizer(lang)


def tokenize(text: str, lang: str, lowercase: bool = False) -> list[str]:
    """Normalize punctuation, then split into Moses tokens (unescaped: `l'`, not `l&apos;`)."""
    normalizer, tokenizer, _ = _tools(lang)
    if lowercase:
        text = text.lower()
    return tokenizer.tokenize(normalizer.normalize(text), escape=False)


def detokenize(tokens: list[str], lang: str) -> str:
    """Join Moses tokens back into text; also undoes the HTML escaping of tokenized corpora."""
    return _tools(lang)[2].detokenize(tokens)
