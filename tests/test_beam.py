"""Beam search: exact with a beam as wide as the search space, greedy at width 1, batch-invariant."""

from __future__ import annotations

import itertools

import pytest
import torch
from beam_before import EnsembleBefore, beam_search_before

from dist_s2s.config import ModelConfig
from dist_s2s.data.vocab import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from dist_s2s.decode import beam as beam_module
from dist_s2s.decode.beam import MIN_ROWS, Ensemble, beam_search
from dist_s2s.model.seq2seq import Seq2Seq


def peaky_model(seed: int, tgt_vocab: int = 7, attention: str = "none") -> Seq2Seq:
    """Random weights in [-1, 1]: next-word distributions far from uniform, so orders matter."""
    torch.manual_seed(seed)
    return Seq2Seq(ModelConfig(embedding_dim=8, hidden_size=8, num_layers=2, softmax_shards=2, init_range=1.0,
                               attention=attention), 11, tgt_vocab).eval()


SOURCES = torch.tensor([[5, 6, 7, 8], [9, 4, 10, 0], [6, 6, 0, 0]])
LENGTHS = torch.tensor([4, 3, 2])


@torch.no_grad()
def sequence_log_prob(model: Seq2Seq, src: torch.Tensor, length: torch.Tensor, words: tuple[int, ...]) -> float:
    """log p(words </s> | src), teacher-forced: the reference the search is checked against."""
    tgt_in = torch.tensor([[BOS_ID, *words]])
    tgt_out = torch.tensor([[*words, EOS_ID]])
    hidden, _ = model.decode(tgt_in, model.encode(src[None], length[None]))
    return float(model.log_probs(hidden[0]).gather(1, tgt_out.T).sum())


@pytest.mark.parametrize("seed, attention", [(0, "none"), (1, "none"), (2, "none"), (0, "luong"), (1, "luong")])
def test_a_beam_as_wide_as_the_search_space_finds_the_most_probable_sequences_exactly(seed, attention):
    model = peaky_model(seed, tgt_vocab=7, attention=attention)  # words the search may emit: <unk>, 4, 5, 6 and </s>
    words = [UNK_ID, 4, 5, 6]
    max_words = 3
    space = [seq for n in range(max_words + 1) for seq in itertools.product(words, repeat=n)]
    found = beam_search(Ensemble([model]), SOURCES, LENGTHS, beam=len(words) ** max_words * len(words),
                        max_length_ratio=0.0, nbest=5, extra_words=max_words)
    for sentence in range(len(SOURCES)):
        exact = sorted(((sequence_log_prob(model, SOURCES[sentence], LENGTHS[sentence], seq), seq) for seq in space),
                       reverse=True)[:5]
        assert [tuple(h.tokens) for h in found[sentence]] == [seq for _, seq in exact]
        assert [h.score for h in found[sentence]] == pytest.approx([score for score, _ in exact], abs=1e-4)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_length_penalty_ranks_by_gnmts_normalized_score_exactly_and_favours_longer_outputs(seed):
    """α = 2: the full search returns the sequences with the best log p / ((5 + |Y|) / 6), |Y| counting </s>."""
    model = peaky_model(seed, tgt_vocab=7)
    words, max_words, alpha = [UNK_ID, 4, 5, 6], 3, 2.0
    space = [seq for n in range(max_words + 1) for seq in itertools.product(words, repeat=n)]
    width = len(words) ** max_words * len(words)
    plain = beam_search(Ensemble([model]), SOURCES, LENGTHS, beam=width, max_length_ratio=0.0, nbest=5,
                        extra_words=max_words)
    found = beam_search(Ensemble([model]), SOURCES, LENGTHS, beam=width, max_length_ratio=0.0, nbest=5,
                        extra_words=max_words, length_penalty=alpha)
    for sentence in range(len(SOURCES)):
        scored = [(sequence_log_prob(model, SOURCES[sentence], LENGTHS[sentence], seq), seq) for seq in space]
        exact = sorted(((score / ((5 + len(seq) + 1) / 6) ** alpha, seq) for score, seq in scored), reverse=True)[:5]
        assert [tuple(h.tokens) for h in found[sentence]] == [seq for _, seq in exact]
        assert [h.ranking for h in found[sentence]] == pytest.approx([ranking for ranking, _ in exact], abs=1e-4)
    words = [sum(len(h.tokens) for hypotheses in result for h in hypotheses) for result in (found, plain)]
    assert words[0] > words[1], "the n-best lists hold longer outputs"


@torch.no_grad()
def greedy(model: Seq2Seq, src: torch.Tensor, length: torch.Tensor, max_words: int) -> list[int]:
    states = model.encode(src[None], length[None])
    word, words = BOS_ID, []
    for _ in range(max_words + 1):
        hidden, states = model.decode(torch.tensor([[word]]), states)
        log_probs = model.log_probs(hidden[:, 0])[0]
        log_probs[[PAD_ID, BOS_ID]] = float("-inf")
        if len(words) == max_words:
            return words
        word = int(log_probs.argmax())
        if word == EOS_ID:
            return words
        words.append(word)
    return words


def test_a_beam_of_one_is_greedy_search():
    model = peaky_model(3, tgt_vocab=30)
    found = beam_search(Ensemble([model]), SOURCES, LENGTHS, beam=1, max_length_ratio=2.0)
    for sentence in range(len(SOURCES)):
        expected = greedy(model, SOURCES[sentence], LENGTHS[sentence], int(LENGTHS[sentence]) * 2 + 10)
        assert found[sentence][0].tokens == expected


@pytest.mark.parametrize("attention", ["none", "luong"])
def test_decoding_a_batch_gives_each_sentence_what_decoding_it_alone_gives(attention):
    model = peaky_model(4, tgt_vocab=30, attention=attention)
    together = beam_search(Ensemble([model]), SOURCES, LENGTHS, beam=4, nbest=3)
    for sentence in range(len(SOURCES)):
        width = int(LENGTHS[sentence])
        alone = beam_search(Ensemble([model]), SOURCES[sentence:sentence + 1, :width], LENGTHS[sentence:sentence + 1],
                            beam=4, nbest=3)[0]
        assert [h.tokens for h in alone] == [h.tokens for h in together[sentence]]
        assert [h.score for h in alone] == pytest.approx([h.score for h in together[sentence]], abs=1e-5)


def test_an_ensemble_of_a_model_with_itself_is_the_model():
    model = peaky_model(5, tgt_vocab=30)
    single = beam_search(Ensemble([model]), SOURCES, LENGTHS, beam=3, nbest=2)
    twice = beam_search(Ensemble([model, model]), SOURCES, LENGTHS, beam=3, nbest=2)
    for a, b in zip(single, twice):
        assert [h.tokens for h in a] == [h.tokens for h in b]
        assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-5)
        assert all(h.model_scores == pytest.approx([h.score, h.score], abs=1e-5) for h in b)


def test_an_ensemble_averages_its_members_log_probabilities():
    first, second = peaky_model(6, tgt_vocab=30), peaky_model(7, tgt_vocab=30)
    best = beam_search(Ensemble([first, second]), SOURCES, LENGTHS, beam=3)
    for sentence, (hypothesis,) in enumerate(best):
        members = [sequence_log_prob(m, SOURCES[sentence], LENGTHS[sentence], tuple(hypothesis.tokens))
                   for m in (first, second)]
        assert hypothesis.model_scores == pytest.approx(members, abs=1e-4)
        assert hypothesis.score == pytest.approx(sum(members) / 2, abs=1e-4)


def test_no_hypothesis_is_longer_than_the_limit():
    model = peaky_model(8, tgt_vocab=30)
    found = beam_search(Ensemble([model]), SOURCES, LENGTHS, beam=5, nbest=5, max_length_ratio=0.5, extra_words=1)
    for sentence, hypotheses in enumerate(found):
        assert hypotheses and all(len(h.tokens) <= int(LENGTHS[sentence] * 0.5) + 1 for h in hypotheses)
        assert [h.score for h in hypotheses] == sorted((h.score for h in hypotheses), reverse=True)


def random_batch(seed: int, sentences: int, longest: int, vocab: int = 11) -> tuple[torch.Tensor, torch.Tensor]:
    """Sentences of lengths 1..longest (so they finish at different steps), longest first as batches come."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, longest + 1, (sentences,), generator=generator).sort(descending=True).values
    src = torch.randint(4, vocab, (sentences, int(lengths[0])), generator=generator)
    return src.masked_fill(torch.arange(src.shape[1])[None, :] >= lengths[:, None], PAD_ID), lengths


SEARCHES = [  # (beam, nbest, length penalty, members, attention, sentences, target vocabulary, scored at once)
    (1, 1, 0.0, 1, "none", 40, 30, None), (2, 2, 0.0, 1, "none", 24, 30, None), (5, 3, 0.6, 1, "none", 16, 200, None),
    (12, 1, 0.0, 1, "none", 9, 200, None), (12, 12, 0.6, 1, "luong", 7, 60, None), (4, 2, 0.6, 2, "none", 10, 30, None),
    (3, 3, 0.0, 3, "luong", 8, 30, None), (12, 4, 1.0, 1, "none", 3, 500, None),
    (12, 2, 0.6, 1, "none", 70, 30, 3000), (5, 1, 0.0, 2, "luong", 61, 30, 2000),  # scored in parts
]


@pytest.mark.parametrize("beam, nbest, alpha, members, attention, sentences, vocab, at_once", SEARCHES)
def test_the_faster_search_returns_exactly_what_the_search_before_it_returned(beam, nbest, alpha, members, attention,
                                                                             sentences, vocab, at_once, monkeypatch):
    """Bit for bit: the same n-best lists in the same order, the same scores, rankings and member scores, with
    finished sentences leaving the batch at different steps and, where a batch's scores would not fit the
    cache, scored in parts (the oracle: tests/beam_before.py)."""
    if at_once:
        monkeypatch.setattr(beam_module, "SCORED_AT_ONCE", at_once)
        assert len(beam_module._parts(sentences, beam, vocab, torch.device("cpu"))) > 1
    models = [peaky_model(10 + m, tgt_vocab=vocab, attention=attention) for m in range(members)]
    src, lengths = random_batch(beam * 7 + members, sentences, longest=9)
    found = beam_search(Ensemble(models), src, lengths, beam, nbest=nbest, length_penalty=alpha,
                        max_length_ratio=1.5, extra_words=3)
    expected = beam_search_before(EnsembleBefore(models), src, lengths, beam, nbest=nbest, length_penalty=alpha,
                                  max_length_ratio=1.5, extra_words=3)
    assert [[(h.tokens, h.score, h.ranking, h.model_scores) for h in hypotheses] for hypotheses in found] == \
        [[(h.tokens, h.score, h.ranking, h.model_scores) for h in hypotheses] for hypotheses in expected]


def test_finished_sentences_leave_the_batch_down_to_the_fewest_rows_that_keep_the_results_exact(monkeypatch):
    rows = []
    step = Ensemble.step
    monkeypatch.setattr(Ensemble, "step", lambda self, tokens, *rest: rows.append(len(tokens)) or step(self, tokens,
                                                                                                      *rest))
    src, lengths = random_batch(1, 40, longest=9)
    beam_search(Ensemble([peaky_model(11, tgt_vocab=30)]), src, lengths, 2, max_length_ratio=1.5, extra_words=3)
    assert rows[0] == 80 and rows == sorted(rows, reverse=True) and len(set(rows)) > 3
    assert min(rows) >= MIN_ROWS


@pytest.mark.parametrize("seed, attention", [(0, "none"), (1, "none"), (2, "none"), (0, "luong")])
def test_a_bf16_search_keeps_every_score_within_a_hundredth_of_a_nat_a_word_of_fp32(seed, attention):
    """eval.precision=bf16 (weights and products in bf16): each hypothesis's score is its fp32 log-probability
    to within 0.01 a word (</s> counted); the search may differ where two hypotheses are closer than that."""
    model = peaky_model(20 + seed, tgt_vocab=200, attention=attention)
    src, lengths = random_batch(seed, 12, longest=9)
    found = beam_search(Ensemble([model], "bf16"), src, lengths, 5, nbest=3, max_length_ratio=1.5, extra_words=3)
    assert all(found)
    for sentence, hypotheses in enumerate(found):
        for h in hypotheses:
            exact = sequence_log_prob(model, src[sentence, :int(lengths[sentence])], lengths[sentence],
                                      tuple(h.tokens))
            assert abs(h.score - exact) <= 0.01 * (len(h.tokens) + 1)
    assert next(model.parameters()).dtype == torch.float32, "the model itself is left in fp32"


def test_an_unknown_decoding_precision_is_refused():
    with pytest.raises(ValueError, match="precision must be one of"):
        Ensemble([peaky_model(0)], "fp16")
