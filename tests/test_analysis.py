"""The sentence-vector measure behind claim 6 (paper Figure 2): do phrases group by meaning?"""

from __future__ import annotations

import numpy as np
import pytest

from dist_s2s.evaluate.analysis import (
    MEANING_GROUPS,
    ORDER_TWINS,
    PHRASES,
    length_edges,
    meaning_grouping,
    order_sensitivity,
)


def vectors_clustered_by(cluster_of: dict[int, int], spread: float = 0.1) -> np.ndarray:
    """One point near each cluster's centre (centres far apart), in PHRASES order."""
    rng = np.random.default_rng(0)
    centres = {cluster: rng.normal(size=8) * 10 for cluster in set(cluster_of.values())}
    return np.stack([centres[cluster_of[i]] + rng.normal(size=8) * spread for i in range(len(PHRASES))])


def test_the_groups_pair_phrases_that_say_who_did_what_to_whom():
    assert sorted(i for pair in MEANING_GROUPS for group in pair for i in group) == list(range(len(PHRASES)))
    (john_to_mary, mary_to_john), (i_gave, she_gave) = MEANING_GROUPS
    assert all(PHRASES[i].startswith("John") for i in john_to_mary)
    assert "She was given a card by me in the garden" in [PHRASES[i] for i in i_gave]
    assert "I was given a card by her in the garden" in [PHRASES[i] for i in she_gave]


def test_vectors_that_cluster_by_meaning_score_perfectly():
    meaning = {i: n for n, group in enumerate(g for pair in MEANING_GROUPS for g in pair) for i in group}
    scores = meaning_grouping(vectors_clustered_by(meaning))
    assert scores["nearest_same_meaning"] == 1.0
    assert scores["between_over_within"] > 10


def test_vectors_that_cluster_by_shared_words_and_ignore_order_score_badly():
    # Each phrase beside its twin with the names or pronouns swapped: the same words, the other meaning.
    by_surface = {0: 0, 1: 0, 4: 1, 5: 1, 2: 2, 3: 2, 6: 3, 9: 3, 7: 4, 10: 4, 8: 5, 11: 5}
    scores = meaning_grouping(vectors_clustered_by(by_surface))
    assert scores["nearest_same_meaning"] == 0.0
    assert scores["between_over_within"] < 1


def test_the_order_twins_differ_only_in_who_is_named_where():
    people = {"john", "mary", "i", "me", "she", "her"}
    for first, second in ORDER_TWINS:
        words = [[w for w in PHRASES[i].lower().split() if w not in people] for i in (first, second)]
        assert words[0] == words[1] and PHRASES[first] != PHRASES[second]
    assert sorted(i for pair in ORDER_TWINS for i in pair) == list(range(len(PHRASES)))


def test_order_sensitivity_tells_a_bag_of_words_from_vectors_that_follow_meaning():
    meaning = {i: n for n, group in enumerate(g for pair in MEANING_GROUPS for g in pair) for i in group}
    by_surface = {i: n for n, pair in enumerate(ORDER_TWINS) for i in pair}
    follows_meaning = order_sensitivity(vectors_clustered_by(meaning))
    bag_of_words = order_sensitivity(vectors_clustered_by(by_surface, spread=0.0))
    assert follows_meaning["order_told_apart"] == 1.0 and follows_meaning["order_pair_cosine"] < 0.9
    assert bag_of_words == {"order_told_apart": 0.0, "order_pair_cosine": pytest.approx(1.0)}


def test_random_vectors_sit_near_chance():
    rng = np.random.default_rng(1)
    shares = [meaning_grouping(rng.normal(size=(len(PHRASES), 16)))["nearest_same_meaning"] for _ in range(300)]
    assert np.mean(shares) == pytest.approx(0.4, abs=0.05)


def test_length_bins_reach_the_longest_sentence_present_up_to_the_papers_79_words():
    assert length_edges([5, 12, 40]) == [0, 8, 11, 14, 17, 21, 26, 35], "captions: an open bin above 35 words"
    assert length_edges([5, 30, 64]) == [0, 8, 11, 14, 17, 21, 26, 35, 50], "news: a bin of 51-79 words"
    assert length_edges([5, 30, 120])[-1] == 79, "and beyond the paper's longest bin, an open one"
    assert length_edges([]) == [0]
