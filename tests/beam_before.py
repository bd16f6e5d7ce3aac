"""The beam search as it was before it was made faster (issue 36; dist_s2s/decode/beam.py at commit 3173ffc), kept
unchanged as the oracle: the faster search must return exactly its n-best lists, scores and member scores."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dist_s2s.data.vocab import BOS_ID, EOS_ID, PAD_ID
from dist_s2s.decode.beam import Hypothesis, length_normalizer
from dist_s2s.device import to_device
from dist_s2s.model.seq2seq import DecoderState, Seq2Seq

State = DecoderState


class EnsembleBefore:
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
    return [state.select(rows) for state in states]


def _first_beams(sentences: int, beam: int, members: int, *, width: int, device: torch.device):
    """Each sentence's beam before the first word: one live hypothesis (<s>, score 0), the others -inf; the scores,
    each ensemble member's, the prefixes so far and the last tokens."""
    scores = torch.full((sentences, beam), float("-inf"), device=device)
    scores[:, 0] = 0.0
    return (scores, torch.zeros(members, sentences, beam, device=device),
            torch.full((sentences * beam, width), PAD_ID, dtype=torch.long, device=device),
            torch.full((sentences * beam,), BOS_ID, dtype=torch.long, device=device))


@dataclass
class _Words:
    """The target vocabulary's ids, and the words a hypothesis may never take (<pad>, <s>)."""

    ids: torch.Tensor
    banned: torch.Tensor

    @classmethod
    def of(cls, vocab: int, device: torch.device) -> _Words:
        ids = torch.arange(vocab, device=device)
        return cls(ids, (ids == PAD_ID) | (ids == BOS_ID))

    def allowed(self, log_probs: torch.Tensor, *, at_limit: torch.Tensor) -> torch.Tensor:
        """-inf for banned words, and for every word but </s> on rows at their length limit."""
        return log_probs.masked_fill(self.banned | (at_limit[:, None] & (self.ids != EOS_ID)), float("-inf"))


@torch.no_grad()
def beam_search_before(ensemble: EnsembleBefore, src: torch.Tensor, src_lengths: torch.Tensor, beam: int, *,
                max_length_ratio: float = 2.0, nbest: int = 1, extra_words: int = 10,
                length_penalty: float = 0.0) -> list[list[Hypothesis]]:
    """The `nbest` best translations of each sentence of the batch, best first (by `Hypothesis.ranking`).

    A hypothesis has at most `max_length_ratio × source length + extra_words` words; at that
    length only </s> may follow. `src_lengths` on the host (as a batch keeps them). The bookkeeping
    stays on the device: each sentence's `nbest` best complete hypotheses are kept in tensors, merged
    with each step's completions by one stable sort, and the host reads one flag a step (all done?) and
    the results once at the end.
    """
    if not 1 <= nbest <= beam:
        raise ValueError(f"nbest must be between 1 and the beam size {beam}, got {nbest}")
    (sentences, members), device = (src.shape[0], len(ensemble.models)), src.device
    limits = [int(length * max_length_ratio) + extra_words for length in src_lengths.tolist()]
    longest = max(limits)
    max_words = to_device(torch.tensor(limits), device)
    states = _select(ensemble.encode(src, src_lengths), torch.arange(sentences, device=device).repeat_interleave(beam))
    scores, member_scores, prefixes, tokens = _first_beams(sentences, beam, members, width=longest + 1, device=device)
    best = _Complete.empty(sentences, nbest, members=members, width=longest + 1, device=device)
    done = torch.zeros(sentences, dtype=torch.bool, device=device)
    best_possible = length_normalizer(max_words + 1, length_penalty)  # what a live score s can reach: s / this
    vocab = ensemble.models[0].tgt_vocab_size
    words = _Words.of(vocab, device)
    kept = min(2 * beam, beam * vocab)  # candidates a step keeps: enough for `beam` live ones after </s>
    positions = torch.arange(kept, device=device)
    first_rows = torch.arange(sentences, device=device)[:, None] * beam

    for length in range(longest + 1):
        log_probs, per_member, states = ensemble.step(tokens, states)
        log_probs = words.allowed(log_probs, at_limit=(length >= max_words).repeat_interleave(beam))
        candidates = (scores[:, :, None] + log_probs.view(sentences, beam, vocab)).view(sentences, -1)
        candidates.masked_fill_(done[:, None], float("-inf"))
        top_scores, top = candidates.topk(kept, dim=1)
        origin, word = top // vocab, top % vocab
        ending = word == EOS_ID
        origin_rows = first_rows + origin
        member_totals = member_scores.gather(2, origin.expand(members, -1, -1)) + per_member[:, origin_rows, word]

        # Complete: </s> among the first `beam` candidates, with a finite score.
        completing = ending & (positions < beam) & torch.isfinite(top_scores)
        ranking = (top_scores / length_normalizer(length + 1, length_penalty)).masked_fill(~completing, float("-inf"))
        best = best.merged(ranking, top_scores, member_scores=member_totals, tokens=prefixes[origin_rows], words=length)

        # Live: the best `beam` candidates that do not end.
        order = (ending.long() * kept + positions).argsort(dim=1)[:, :beam]
        scores = top_scores.gather(1, order)
        member_scores = member_totals.gather(2, order.expand(members, -1, -1))
        chosen_rows = origin_rows.gather(1, order).flatten()
        tokens = word.gather(1, order).flatten()
        prefixes = prefixes[chosen_rows]
        prefixes[:, length] = tokens
        states = _select(states, chosen_rows)

        settled = best.ranking[:, nbest - 1] > scores.max(dim=1).values / best_possible
        done |= settled | (length >= max_words)
        if bool(done.all()):  # the one read a step
            break
    return best.hypotheses()


@dataclass
class _Complete:
    """Each sentence's `nbest` best complete hypotheses so far, best first, as device tensors."""

    ranking: torch.Tensor
    """[S, N] what they are ranked by (-inf: none yet)."""
    score: torch.Tensor
    """[S, N] their summed log-probabilities."""
    member_scores: torch.Tensor
    """[M, S, N] each ensemble member's."""
    tokens: torch.Tensor
    """[S, N, W] their words, padded."""
    words: torch.Tensor
    """[S, N] how many words each has."""

    @classmethod
    def empty(cls, sentences: int, nbest: int, *, members: int, width: int, device: torch.device) -> _Complete:
        return cls(torch.full((sentences, nbest), float("-inf"), device=device),
                   torch.zeros(sentences, nbest, device=device), torch.zeros(members, sentences, nbest, device=device),
                   torch.full((sentences, nbest, width), PAD_ID, dtype=torch.long, device=device),
                   torch.zeros(sentences, nbest, dtype=torch.long, device=device))

    def merged(self, ranking: torch.Tensor, score: torch.Tensor, *, member_scores: torch.Tensor,
               tokens: torch.Tensor, words: int) -> _Complete:
        """The best `nbest` of these and a step's completions (-inf ranking: not complete), earlier ones
        first among equals."""
        all_ranking = torch.cat([self.ranking, ranking], dim=1)
        keep = torch.argsort(-all_ranking, dim=1, stable=True)[:, :self.ranking.shape[1]]  # a few dozen columns
        new_words = torch.full_like(score, words, dtype=torch.long)
        member_keep = keep.expand(member_scores.shape[0], -1, -1)
        width = self.tokens.shape[2]
        return _Complete(all_ranking.gather(1, keep), torch.cat([self.score, score], dim=1).gather(1, keep),
                         torch.cat([self.member_scores, member_scores], dim=2).gather(2, member_keep),
                         torch.cat([self.tokens, tokens], dim=1).gather(1, keep[:, :, None].expand(-1, -1, width)),
                         torch.cat([self.words, new_words], dim=1).gather(1, keep))

    def hypotheses(self) -> list[list[Hypothesis]]:
        """Read once: the complete hypotheses of every sentence, best first."""
        ranking, score, words = self.ranking.tolist(), self.score.tolist(), self.words.tolist()
        tokens, members = self.tokens.tolist(), self.member_scores.permute(1, 2, 0).tolist()
        return [[Hypothesis(tokens=tokens[s][n][:words[s][n]], score=score[s][n], model_scores=members[s][n],
                            ranking=ranking[s][n]) for n in range(len(ranking[s])) if ranking[s][n] > float("-inf")]
                for s in range(len(ranking))]

