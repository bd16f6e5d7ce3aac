"""Left-to-right beam search over a batch of sentences at once, for one model or an ensemble.

Paper §3.3: keep the B most likely partial hypotheses; extend each by every word; when one
appends </s> it leaves the beam for the set of complete hypotheses. Scores are plain sums of
log-probabilities, as in the paper; `length_penalty` α > 0 ranks complete hypotheses by GNMT's
normalization instead (Wu et al. 2016: log p / ((5 + |Y|) / 6)^α, |Y| counting </s>), which
undoes the plain sum's preference for short outputs. A sentence is done once it has `nbest`
complete hypotheses ranking above anything a live one can still become: raw scores only fall
as words are added, so a live score s can at best reach s / lp(the length limit). With a beam
as large as the search space the result is the exact best sequence under that ranking (tested).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dist_s2s.data.vocab import BOS_ID, EOS_ID, PAD_ID
from dist_s2s.model.seq2seq import Seq2Seq

State = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class Hypothesis:
    tokens: list[int]
    """Target word ids, without <s> and </s>."""
    score: float
    """Sum of the ensemble's per-step log-probabilities, </s> included."""
    model_scores: list[float]
    """Each member's own log-probability of the same tokens (n-best features)."""
    ranking: float = 0.0
    """What the hypotheses are ranked by: `score`, or `score` / lp(length) with a length penalty."""


def length_normalizer(words: torch.Tensor | int, alpha: float) -> torch.Tensor | float:
    """GNMT's lp = ((5 + |Y|) / 6)^α for |Y| predicted words (</s> included); 1 when α = 0."""
    return ((5 + words) / 6) ** alpha


class Ensemble:
    """Models decoding in lock step; the next-word distribution is the mean of their log-probabilities."""

    def __init__(self, models: list[Seq2Seq]):
        if not models:
            raise ValueError("an ensemble needs at least one model")
        self.models = models

    @torch.no_grad()
    def encode(self, src: torch.Tensor, src_lengths: torch.Tensor) -> list[State]:
        return [model.encode(src, src_lengths) for model in self.models]

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, states: list[State]) -> tuple[torch.Tensor, torch.Tensor, list[State]]:
        """Previous words [N] → mean log-probs [N, V], each member's [M, N, V], and the next states."""
        per_model, next_states = [], []
        for model, state in zip(self.models, states):
            hidden, finals = model.decode(tokens[:, None], state)
            per_model.append(model.log_probs(hidden[:, 0]))
            next_states.append(finals)
        stacked = torch.stack(per_model)
        return stacked.mean(dim=0), stacked, next_states


def _select(states: list[State], rows: torch.Tensor) -> list[State]:
    return [[(h[:, rows], c[:, rows]) for h, c in state] for state in states]


@torch.no_grad()
def beam_search(ensemble: Ensemble, src: torch.Tensor, src_lengths: torch.Tensor, beam: int, *,
                max_length_ratio: float = 2.0, nbest: int = 1, extra_words: int = 10,
                length_penalty: float = 0.0) -> list[list[Hypothesis]]:
    """The `nbest` best translations of each sentence of the batch, best first (by `Hypothesis.ranking`).

    A hypothesis has at most `max_length_ratio × source length + extra_words` words; at that
    length only </s> may follow.
    """
    if not 1 <= nbest <= beam:
        raise ValueError(f"nbest must be between 1 and the beam size {beam}, got {nbest}")
    sentences, members = src.shape[0], len(ensemble.models)
    device = src.device
    rows = torch.arange(sentences, device=device).repeat_interleave(beam)
    states = _select(ensemble.encode(src, src_lengths), rows)
    max_words = (src_lengths.to(device).double() * max_length_ratio).long() + extra_words
    limits = max_words.tolist()
    limit_normalizer = length_normalizer(max_words + 1, length_penalty)
    scores = torch.full((sentences, beam), float("-inf"), device=device)
    scores[:, 0] = 0.0
    member_scores = torch.zeros(members, sentences, beam, device=device)
    prefixes = torch.empty(sentences * beam, 0, dtype=torch.long, device=device)
    tokens = torch.full((sentences * beam,), BOS_ID, dtype=torch.long, device=device)
    finished: list[list[Hypothesis]] = [[] for _ in range(sentences)]
    done = [False] * sentences

    for length in range(int(max_words.max()) + 1):
        log_probs, per_member, states = ensemble.step(tokens, states)
        vocab = log_probs.shape[-1]
        log_probs[:, PAD_ID] = float("-inf")
        log_probs[:, BOS_ID] = float("-inf")
        at_limit = (length >= max_words).repeat_interleave(beam)
        log_probs[at_limit] = torch.where(torch.arange(vocab, device=device) == EOS_ID, log_probs[at_limit],
                                          torch.tensor(float("-inf"), device=device))
        candidates = (scores[:, :, None] + log_probs.view(sentences, beam, vocab)).view(sentences, -1)
        candidates.masked_fill_(torch.tensor(done, device=device)[:, None], float("-inf"))
        top_scores, top = candidates.topk(min(2 * beam, beam * vocab), dim=1)
        origin, word = top // vocab, top % vocab
        ending = word == EOS_ID
        origin_rows = torch.arange(sentences, device=device)[:, None] * beam + origin
        member_totals = member_scores.gather(2, origin.expand(members, -1, -1)) + per_member[:, origin_rows, word]

        # Complete: </s> among the first `beam` candidates, with a finite score.
        completing = ending & (torch.arange(top.shape[1], device=device) < beam) & torch.isfinite(top_scores)
        ranked = top_scores / length_normalizer(length + 1, length_penalty)
        for sentence, position in completing.nonzero().tolist():
            finished[sentence].append(Hypothesis(
                tokens=prefixes[origin_rows[sentence, position]].tolist(), score=float(top_scores[sentence, position]),
                model_scores=member_totals[:, sentence, position].tolist(), ranking=float(ranked[sentence, position])))

        # Live: the best `beam` candidates that do not end.
        order = (ending.long() * top.shape[1] + torch.arange(top.shape[1], device=device)).argsort(dim=1)[:, :beam]
        scores = top_scores.gather(1, order)
        member_scores = member_totals.gather(2, order.expand(members, -1, -1))
        chosen_rows = origin_rows.gather(1, order).flatten()
        tokens = word.gather(1, order).flatten()
        prefixes = torch.cat([prefixes[chosen_rows], tokens[:, None]], dim=1)
        states = _select(states, chosen_rows)

        best_live = (scores.max(dim=1).values / limit_normalizer).tolist()  # the best a live one can reach
        for sentence in range(sentences):
            if done[sentence]:
                continue
            complete = sorted(h.ranking for h in finished[sentence])
            settled = len(complete) >= nbest and best_live[sentence] < complete[-nbest]
            if settled or length >= limits[sentence]:
                done[sentence] = True
        if all(done):
            break
    return [sorted(hypotheses, key=lambda h: -h.ranking)[:nbest] for hypotheses in finished]
