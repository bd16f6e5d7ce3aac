"""Word-level tokenization with sacremoses, the Moses scripts of the paper's WMT'14 setup."""

from __future__ import annotations

import functools

from sacremoses import MosesDetokenizer, MosesPunctNormalizer, MosesTokenizer


@functools.cache
def _tools(lang: str) -> tuple[MosesPunctNormalizer, MosesTokenizer, MosesDetokenizer]:
    return MosesPunctNormalizer(lang), MosesTokenizer(lang), MosesDetokenizer(lang)


def tokenize(text: str, lang: str, lowercase: bool = False) -> list[str]:
    """Normalize punctuation, then split into Moses tokens (unescaped: `l'`, not `l&apos;`)."""
    normalizer, tokenizer, _ = _tools(lang)
    if lowercase:
        text = text.lower()
    return tokenizer.tokenize(normalizer.normalize(text), escape=False)


def detokenize(tokens: list[str], lang: str) -> str:
    """Join Moses tokens back into text; also undoes the HTML escaping of tokenized corpora."""
    return _tools(lang)[2].detokenize(tokens)
