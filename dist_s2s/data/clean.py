"""One raw line pair → tokenized sentence pair, or the reason it is dropped.

Nothing is dropped silently: every reason is a key of the manifest's `filtered` counts, and
normalizations that keep the pair (CRLF, lone CR) are counted under `normalized`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from dist_s2s.data.tokenize import detokenize, tokenize
from dist_s2s.errors import UserError

INVALID_UTF8 = "invalid_utf8"
EMPTY_SOURCE = "empty_source"
EMPTY_TARGET = "empty_target"
TOO_LONG = "too_long"

CRLF = "crlf"
LONE_CR = "lone_cr"


@dataclass
class TokenizedPair:
    src_tokens: list[str]
    tgt_tokens: list[str]
    src_raw: str
    """The decoded source line as written (line ending removed)."""
    tgt_raw: str
    """The decoded target line as written: the BLEU reference."""


@dataclass
class PairCleaner:
    """Decodes, normalizes, tokenizes and filters line pairs of one input pair."""

    src_path: Path
    tgt_path: Path
    src_lang: str
    tgt_lang: str
    lowercase: bool
    pretokenized: bool
    strict: bool
    normalized: Counter

    def clean(self, src: bytes, tgt: bytes, line_number: int, max_len: int) -> TokenizedPair | str:
        """The pair at 1-based `line_number`, or a filter reason; `max_len` 0 means no limit."""
        src_text = self._decode(src, self.src_path, line_number)
        tgt_text = self._decode(tgt, self.tgt_path, line_number)
        if src_text is None or tgt_text is None:
            return INVALID_UTF8
        src_tokens = self._tokenize(src_text, self.src_lang)
        tgt_tokens = self._tokenize(tgt_text, self.tgt_lang)
        sides = ((src_tokens, self.src_path, EMPTY_SOURCE), (tgt_tokens, self.tgt_path, EMPTY_TARGET))
        for tokens, path, reason in sides:
            if not tokens:
                if self.strict:
                    raise UserError(f"{path}:{line_number}: empty line (its pair is not empty; data.strict is on)")
                return reason
        if max_len and (len(src_tokens) > max_len or len(tgt_tokens) > max_len):
            return TOO_LONG
        return TokenizedPair(src_tokens, tgt_tokens, src_text, tgt_text)

    def _decode(self, raw: bytes, path: Path, line_number: int) -> str | None:
        if raw.endswith(b"\r"):
            raw = raw[:-1]
            self.normalized[CRLF] += 1
        if b"\r" in raw:
            raw = raw.replace(b"\r", b" ")  # a lone CR is not a line break: only \n splits lines
            self.normalized[LONE_CR] += 1
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as error:
            if self.strict:
                raise UserError(f"{path}:{line_number}: invalid UTF-8 at byte {error.start} (data.strict is "
                                "on)") from None
            return None

    def _tokenize(self, text: str, lang: str) -> list[str]:
        text = " ".join(text.split())  # folds U+00A0, U+202F, U+2009 and tabs into plain spaces
        if not text:
            return []
        if self.pretokenized:
            text = detokenize(text.split(" "), lang)
        return tokenize(text, lang, self.lowercase)
