"""The paper's analyses: BLEU by sentence length and by word rarity (Figure 3), PCA of sentence
vectors (Figure 2). Each returns its numbers and writes a PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from sacrebleu.metrics import BLEU

from dist_s2s.data.vocab import UNK_ID
from dist_s2s.decode.translator import Translator
from dist_s2s.device import to_device

LENGTH_EDGES = (0, 8, 11, 14, 17, 21, 26, 35, 50, 79)
"""Source-length bins (words): [1, 8], [9, 11], …, [36, 50], [51, 79], > 79 (the paper's Figure 3 ends at 79);
`length_edges` keeps those below the longest sentence present."""

# Figure 2 of the paper: the same words in different orders, and one event said actively and passively.
PHRASES = (
    "John admires Mary", "Mary admires John", "Mary is in love with John", "John is in love with Mary",
    "John respects Mary", "Mary respects John",
    "I gave her a card in the garden", "In the garden , I gave her a card", "She was given a card by me in the garden",
    "She gave me a card in the garden", "In the garden , she gave me a card", "I was given a card by her in the garden",
)

MEANING_GROUPS = (((0, 3, 4), (1, 2, 5)), ((6, 7, 8), (9, 10, 11)))
"""PHRASES by meaning, two sets of two: who admires/loves/respects whom, and who gave whom the card
(said in another word order or voice). Figure 2's claim is that phrases group by these."""


ORDER_TWINS = ((0, 1), (4, 5), (2, 3), (6, 9), (7, 10), (8, 11))
"""PHRASES in pairs with the same words and the other meaning (the names or the pronouns swapped)."""


def length_edges(lengths: list[float]) -> list[float]:
    """LENGTH_EDGES below the longest sentence: captions stop at an open bin above 35 words, news reaches 79."""
    longest = max(lengths, default=0)
    return [edge for edge in LENGTH_EDGES if edge < longest] or [0]


def bleu_of(hypotheses: list[str], references: list[str]) -> float:
    return BLEU().corpus_score(hypotheses, [references]).score if hypotheses else float("nan")


def binned_bleu(keys: list[float], hypotheses: list[str], references: list[str],
                edges: list[float]) -> list[dict]:
    """Corpus BLEU of the sentences whose key falls in each (edges[i], edges[i+1]] bin; the last bin is open."""
    bins = []
    bounds = list(edges) + [float("inf")]
    for low, high in zip(bounds[:-1], bounds[1:]):
        rows = [i for i, key in enumerate(keys) if low < key <= high]
        bins.append({"low": low, "high": high, "sentences": len(rows),
                     "bleu": bleu_of([hypotheses[i] for i in rows], [references[i] for i in rows])})
    return bins


def frequency_rank(src_ids: list[list[int]], vocab_size: int) -> list[float]:
    """Average frequency rank of each source's words: word ids are ranks (most frequent first), <unk> ranks last."""
    return [float(np.mean([vocab_size if i == UNK_ID else i for i in ids])) if ids else 0.0 for ids in src_ids]


def quantile_edges(values: list[float], bins: int) -> list[float]:
    """Bin edges giving about equal sentence counts (the first edge below every value)."""
    inner = np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1]).tolist()
    return [min(values) - 1e-9, *sorted(set(inner))]


def plot_bins(bins: list[dict], xlabel: str, title: str, path: Path, *, whole: bool = False) -> Path:
    """BLEU per bin; `whole` labels integer bins by their first and last member (1–8, 9–11, …)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = 1 if whole else 0
    labels = [f"{b['low'] + first:.0f}–{b['high']:.0f}" if b["high"] != float("inf") else f">{b['low']:.0f}"
              for b in bins]
    figure, axis = plt.subplots(figsize=(7, 4))
    axis.plot(range(len(bins)), [b["bleu"] for b in bins], marker="o")
    for x, b in enumerate(bins):
        axis.annotate(f"n={b['sentences']}", (x, b["bleu"]), textcoords="offset points", xytext=(0, 6),
                      ha="center", fontsize=7)
    axis.set_xticks(range(len(bins)), labels, rotation=30)
    axis.set_xlabel(xlabel)
    axis.set_ylabel("BLEU (sacreBLEU)")
    axis.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


@torch.no_grad()
def sentence_vectors(translator: Translator, phrases: tuple[str, ...] = PHRASES) -> np.ndarray:
    """Each phrase's encoder summary: the final hidden states of every encoder layer, concatenated
    (the state the decoder starts from), averaged over the ensemble's members."""
    vectors = []
    for phrase in phrases:
        ids = translator.source_ids(phrase)
        src = to_device(torch.tensor([ids]), translator.device)
        lengths = torch.tensor([len(ids)])
        states = [model.encode(src, lengths) for model in translator.ensemble.models]  # fp32, whatever decodes
        per_member = [torch.cat([h[0, 0] for h, _ in member.layers]) for member in states]
        vectors.append(torch.stack(per_member).mean(0).cpu().numpy())
    return np.stack(vectors)


def meaning_grouping(vectors: np.ndarray, groups=MEANING_GROUPS) -> dict[str, float]:
    """How well sentence vectors group by meaning, within each set of phrases: the share of phrases
    whose nearest neighbour means the same (chance 2 of 5 = 0.4 in a set of 6), and the mean distance
    between meanings over the mean distance within one (> 1: meaning outweighs the shared words)."""
    nearest_same, within, between = [], [], []
    for first, second in groups:
        members = [*first, *second]
        meaning = {index: group for group in (first, second) for index in group}
        for index in members:
            others = [o for o in members if o != index]
            distances = {o: float(np.linalg.norm(vectors[index] - vectors[o])) for o in others}
            nearest_same.append(meaning[min(others, key=distances.get)] == meaning[index])
            for other, distance in distances.items():
                (within if meaning[other] == meaning[index] else between).append(distance)
    return {"nearest_same_meaning": float(np.mean(nearest_same)),
            "between_over_within": float(np.mean(between) / np.mean(within))}


def order_sensitivity(vectors: np.ndarray, groups=MEANING_GROUPS, twins=ORDER_TWINS) -> dict[str, float]:
    """Does word order move a sentence's vector? The share of phrases nearer to a phrase of their own meaning
    than to their twin with the same words swapped (a bag of words scores 0, vectors that follow meaning 1),
    and the cosine of Figure 2's own pair, "John admires Mary" / "Mary admires John"."""
    meaning = {index: group for pair in groups for group in pair for index in group}
    twin_of = {a: b for pair in twins for a, b in (pair, pair[::-1])}
    told_apart = []
    for index, twin in twin_of.items():
        own = [o for o in meaning[index] if o != index]
        nearest_own = min(float(np.linalg.norm(vectors[index] - vectors[o])) for o in own)
        told_apart.append(nearest_own < float(np.linalg.norm(vectors[index] - vectors[twin])))
    first, second = vectors[twins[0][0]], vectors[twins[0][1]]
    cosine = float(first @ second / (np.linalg.norm(first) * np.linalg.norm(second)))
    return {"order_told_apart": float(np.mean(told_apart)), "order_pair_cosine": cosine}


def pca_2d(vectors: np.ndarray) -> np.ndarray:
    centered = vectors - vectors.mean(axis=0)
    _, _, components = np.linalg.svd(centered, full_matrices=False)
    return centered @ components[:2].T


def plot_pca(points: np.ndarray, phrases: tuple[str, ...], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 6))
    axis.scatter(points[:, 0], points[:, 1])
    for index, ((x, y), phrase) in enumerate(zip(points, phrases)):  # staggered: near points stay readable
        axis.annotate(phrase, (x, y), fontsize=7, xytext=(4, 10 * (index % 3) - 10), textcoords="offset points")
    axis.set_title("2-D PCA of the encoder's final states (paper Figure 2)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
