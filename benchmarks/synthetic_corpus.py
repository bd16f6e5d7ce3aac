"""A deterministic WMT'14-sized en–fr corpus made from the real corpora in data.root, for testing at scale.

    .venv/bin/python benchmarks/synthetic_corpus.py --pairs 12000000 --out runs/synthetic/wmt14_like

writes `<out>/train.en`, `<out>/train.fr` and `<out>/stats.json`. Nothing here can download WMT'14
(36M pairs, several GB), so `prepare`, the loader and the paper's model are measured at its size on
this stand-in, which imitates the two properties that decide their cost:

- **Lengths.** Each line joins real aligned pairs (Multi30k, Tatoeba, the WMT news sets, the
  Europarl sample) until the English side reaches a length drawn from a log-normal with WMT'14's
  shape (the last pair cut short on both sides in proportion): about 25 English and 27 French words
  a line on average (the paper's §3.1: 304M English words over 12M pairs), 2% of lines beyond 80
  words on their longer side.
- **Vocabulary growth.** Real text keeps bringing new word types (names, numbers, misspellings):
  Heaps' law, types = K · words^β. Fresh types are put into the lines at the rate that law gives,
  so vocabulary counting sees what it would see on WMT'14 (hundreds of thousands of types a side
  at 12M pairs, `--types-at-12m`); an English fresh type is a name and appears in the French line
  too, French has its own extra types (its richer morphology), and a fresh type recurs now and
  then as rare words do.

The first N lines of a larger corpus are the corpus of N pairs (one random stream), so 1M and
4M are prefixes of 12M. It streams: the pool of real pairs (~230k) is held, the output never is.
"""

from __future__ import annotations

import argparse
import html
import json
import math
import random
import time
from collections import deque
from pathlib import Path

POOL = (
    ("multi30k/train", False),
    ("tatoeba_fra/all", False),
    ("wmt_newstest_2008_2011/train", False),
    ("europarl_v7_sample_tok/train.tok", True),  # Moses-tokenized and HTML-escaped: unescaped here
)
PAPER_PAIRS = 12_000_000
PAPER_WORDS = {"en": 304_000_000, "fr": 348_000_000}
"""The paper's §3.1: the 12M-pair training set's words a side."""
LENGTH_SIGMA = 0.62
"""Log-normal spread of a line's English length: 1% of English sides beyond 80 words at a mean of 25."""
SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "ta", "vo", "zi", "be", "do", "fa", "gu", "ho", "je", "pe", "si")
RECUR = 0.6
"""Per line, the chance that a recently introduced fresh type appears again (rare words recur)."""


def read_pool(root: Path) -> list[tuple[str, str]]:
    """Every non-empty aligned pair of the pool corpora, as (en, fr) text."""
    pool = []
    for prefix, escaped in POOL:
        en_path, fr_path = root / f"{prefix}.en", root / f"{prefix}.fr"
        if not en_path.is_file():
            raise SystemExit(f"synthetic_corpus: {en_path} not found (--root names the real corpora)")
        with open(en_path, encoding="utf-8") as en_file, open(fr_path, encoding="utf-8") as fr_file:
            for en, fr in zip(en_file, fr_file):
                en, fr = en.strip(), fr.strip()
                if en and fr:
                    pool.append((html.unescape(en), html.unescape(fr)) if escaped else (en, fr))
    return pool


def fresh_word(index: int, capitalized: bool) -> str:
    """The index-th fresh type: syllables spelling the index in base 16, so every index is its own word."""
    syllables = []
    index += 16  # at least two syllables
    while index:
        index, digit = divmod(index, 16)
        syllables.append(SYLLABLES[digit])
    word = "".join(syllables)
    return word.capitalize() if capitalized else word


class Heaps:
    """How many fresh types a side should have seen after `words` words: K · words^β, K fixed by the
    number wanted at the paper's word count."""

    def __init__(self, types_at_paper_size: int, paper_words: int, beta: float, *, pool_words: int):
        self.beta = beta
        self.k = types_at_paper_size / paper_words**beta
        self.pool_words = pool_words  # counted as text already read, so the first lines are not all fresh types

    def due(self, words: int) -> int:
        return int(self.k * ((words + self.pool_words) ** self.beta - self.pool_words**self.beta))


class Generator:
    def __init__(self, pool: list[tuple[str, str]], *, seed: int, mean_words: float,
                 types_at_12m: dict[str, int], beta: float):
        self.pool = pool
        self.random = random.Random(seed)
        self.mu = math.log(mean_words) - LENGTH_SIGMA**2 / 2  # the log-normal with this mean
        self.heaps = {lang: Heaps(types_at_12m[lang], PAPER_WORDS[lang], beta,
                                  pool_words=sum(len(pair[side].split()) for pair in pool))
                      for side, lang in enumerate(("en", "fr"))}
        self.words = {"en": 0, "fr": 0}
        self.fresh = {"en": 0, "fr": 0}
        self.recent: deque[tuple[str, str]] = deque(maxlen=20_000)

    def pair(self) -> tuple[str, str]:
        wanted = max(1, round(math.exp(self.random.gauss(self.mu, LENGTH_SIGMA))))
        en_words: list[str] = []
        fr_words: list[str] = []
        while len(en_words) < wanted:
            en, fr = self.pool[self.random.randrange(len(self.pool))]
            en_words += en.split()
            fr_words += fr.split()
        if len(en_words) > wanted:  # cut the last pair short, both sides in proportion
            fr_words = fr_words[:max(1, round(len(fr_words) * wanted / len(en_words)))]
            en_words = en_words[:wanted]
        self.words["en"] += len(en_words)
        self.words["fr"] += len(fr_words)
        self._add_fresh_types(en_words, fr_words)
        return " ".join(en_words), " ".join(fr_words)

    def _add_fresh_types(self, en_words: list[str], fr_words: list[str]) -> None:
        """Replace words by new types until each side has the types Heaps' law says are due."""
        while self.fresh["en"] < self.heaps["en"].due(self.words["en"]):
            name = fresh_word(self.fresh["fr"], capitalized=True)  # a name: the same word in both languages
            self._place(en_words, name)
            self._place(fr_words, name)
            self.recent.append((name, name))
            self.fresh["en"] += 1
            self.fresh["fr"] += 1
        while self.fresh["fr"] < self.heaps["fr"].due(self.words["fr"]):
            self._place(fr_words, fresh_word(self.fresh["fr"], capitalized=False))
            self.fresh["fr"] += 1
        if self.recent and self.random.random() < RECUR:
            en, fr = self.recent[self.random.randrange(len(self.recent))]
            self._place(en_words, en)
            self._place(fr_words, fr)

    def _place(self, words: list[str], word: str) -> None:
        words[self.random.randrange(len(words))] = word


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, required=True)
    parser.add_argument("--out", required=True, help="directory for train.en / train.fr / stats.json")
    parser.add_argument("--root", default="../shared/data", help="the real corpora (data.root)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mean-words", type=float, default=PAPER_WORDS["en"] / PAPER_PAIRS,
                        help="mean English words a line (WMT'14: 25.3)")
    parser.add_argument("--types-at-12m", type=int, nargs=2, default=(500_000, 600_000), metavar=("EN", "FR"),
                        help="fresh word types a side at the paper's 12M pairs")
    parser.add_argument("--beta", type=float, default=0.6, help="Heaps' law exponent")
    args = parser.parse_args()
    if args.pairs < 1:
        raise SystemExit(f"synthetic_corpus: --pairs must be at least 1, got {args.pairs}")

    started = time.perf_counter()
    generator = Generator(read_pool(Path(args.root)), seed=args.seed, mean_words=args.mean_words,
                          types_at_12m=dict(zip(("en", "fr"), args.types_at_12m)), beta=args.beta)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lengths = {"over_80": 0, "max": 0}
    partial = {lang: out / f"train.{lang}.partial" for lang in ("en", "fr")}
    with open(partial["en"], "w", encoding="utf-8", buffering=1 << 20) as en_file, \
            open(partial["fr"], "w", encoding="utf-8", buffering=1 << 20) as fr_file:
        for done in range(1, args.pairs + 1):
            en, fr = generator.pair()
            en_file.write(en + "\n")
            fr_file.write(fr + "\n")
            longest = max(en.count(" "), fr.count(" ")) + 1
            lengths["over_80"] += longest > 80
            lengths["max"] = max(lengths["max"], longest)
            if done % 1_000_000 == 0:
                print(f"synthetic_corpus: {done:,} pairs, {time.perf_counter() - started:.0f} s", flush=True)
    for lang, path in partial.items():
        path.replace(out / f"train.{lang}")  # under its final name only when complete
    stats = {
        "pairs": args.pairs, "seed": args.seed, "mean_words": args.mean_words, "beta": args.beta,
        "types_at_12m": args.types_at_12m, "pool_pairs": len(generator.pool),
        "words": generator.words, "fresh_types": generator.fresh,
        "mean_words_per_line": {lang: round(n / args.pairs, 2) for lang, n in generator.words.items()},
        "lines_over_80_words": lengths["over_80"], "longest_line_words": lengths["max"],
        "bytes": {lang: (out / f"train.{lang}").stat().st_size for lang in ("en", "fr")},
        "seconds": round(time.perf_counter() - started, 1),
    }
    (out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    print(json.dumps(stats))


if __name__ == "__main__":
    main()
