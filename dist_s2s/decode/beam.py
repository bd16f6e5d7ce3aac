"""Left-to-right beam search over a batch of sentences at once, for one model or an ensemble.

Paper §3.3: keep the B most likely partial hypotheses; extend each by every word; when one
appends </s> it leaves the beam for the set of complete hypotheses. Scores are plain sums of
log-probabilities, as in the paper; `length_penalty` α > 0 ranks complete hypotheses by GNMT's
normalization instead (Wu et al. 2016: log p / ((5 + |Y|) / 6)^α, |Y| counting </s>), which
undoes the plain sum's preference for short outputs. A sentence is done once it has `nbest`
complete hypotheses ranking above anything a live one can still become: raw scores only fall
as words are added, so a live score s can at best reach s / lp(the length limit). With a beam
as large as the search space the result is the exact best sequence under that ranking (tested).

Where the time goes (docs/evaluation.md, "Decoding speed"): a step's matrix products (the LSTM layers and the
[rows, hidden] × [hidden, vocabulary] softmax) and every pass over the [rows, vocabulary] scores. So a step
makes as few of those passes as it can (the log-softmax, one in-place add of the beam's scores, one top-k;
banned words and length limits touch only their columns and rows), and a batch sheds its finished sentences,
so the products shrink with the sentences still searching. Results are bit for bit those of the search
before these changes (tests/test_beam.py keeps that search as the oracle).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from dist_s2s.data.vocab import BOS_ID, EOS_ID, PAD_ID
from dist_s2s.device import to_device
from dist_s2s.model.seq2seq import DecoderState, Seq2Seq

State = DecoderState

DECODE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
"""`eval.precision`: the dtype of the search's weights and products (log-softmax and scores are fp32 either
way)."""

MIN_ROWS = 16
"""A batch sheds finished sentences only while it keeps at least this many rows (sentences × beam): with fewer
rows the CPU's matrix library takes other kernels (matrix-vector ones) whose sums round differently, and the
results would depend on how many sentences a batch still holds."""


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

    def __init__(self, models: list[Seq2Seq], precision: str = "fp32"):
        if not models:
            raise ValueError("an ensemble needs at least one model")
        if precision not in DECODE_DTYPES:
            raise ValueError(f"precision must be one of {sorted(DECODE_DTYPES)}, got {precision!r}")
        self.models = models
        self.precision = precision
        dtype = DECODE_DTYPES[precision]
        self.decoders = models if dtype == torch.float32 else [copy.deepcopy(model).to(dtype) for model in models]
        """What the search runs: the models themselves, or copies in bf16 (the models stay as they are for
        perplexity, rescoring and attention)."""

    @torch.no_grad()
    def encode(self, src: torch.Tensor, src_lengths: torch.Tensor) -> list[State]:
        return [model.encode(src, src_lengths) for model in self.decoders]

    @torch.no_grad()
    def softmax_weights(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each member's softmax shards joined into one [V, H] weight and [V] bias, for a search to hold: one
        product over the whole vocabulary instead of one a shard and a copy to join them (the same numbers)."""
        return [(torch.cat([shard.weight for shard in model.softmax]),
                 torch.cat([shard.bias for shard in model.softmax])) for model in self.decoders]

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, states: list[State]) -> tuple[list[torch.Tensor], list[State]]:
        """Previous words [N] → each member's top-layer output [N, H] and its next states."""
        hiddens, next_states = [], []
        for model, state in zip(self.decoders, states):
            hidden, finals = model.decode(tokens[:, None], state)
            hiddens.append(hidden[:, 0])
            next_states.append(finals)
        return hiddens, next_states

    @torch.no_grad()
    def log_probs(self, hiddens: list[torch.Tensor], softmax: list[tuple[torch.Tensor, torch.Tensor]], rows: slice
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """For these rows: the mean log-probs [n, V] (a new fp32 tensor the caller may change), and each member's
        [M, n, V] (None for one model: its log-probs are the mean)."""
        per_model = [torch.log_softmax(nn.functional.linear(hidden[rows], weight, bias).float(), dim=-1)
                     for hidden, (weight, bias) in zip(hiddens, softmax)]
        if len(per_model) == 1:
            return per_model[0], None
        stacked = torch.stack(per_model)
        return stacked.mean(dim=0), stacked


SCORED_AT_ONCE = 8_000_000
"""On a CPU, how many [row, word] scores a step works through at once (32 MB of fp32, this CPU's L3): a batch
with more rows × vocabulary is scored in parts of whole sentences, so the log-softmax, the add and the top-k
read from cache instead of memory (a batch of 128 × 12 rows over 8k words was slower than 64 for it). Parts
are split evenly, each far above `MIN_ROWS`; the results are the same."""


def _parts(sentences: int, beam: int, vocab: int, device: torch.device) -> list[slice]:
    """The step's sentences in parts whose scores fit `SCORED_AT_ONCE` (one part on a GPU)."""
    count = 1 if device.type != "cpu" else max(1, -(-sentences * beam * vocab // SCORED_AT_ONCE))
    count = min(count, max(1, sentences * beam // (4 * MIN_ROWS)))
    bounds = [round(k * sentences / count) for k in range(count + 1)]
    return [slice(a, b) for a, b in zip(bounds, bounds[1:])]


def _best_candidates(ensemble: Ensemble, hiddens: list[torch.Tensor], softmax: list[tuple[torch.Tensor, torch.Tensor]],
                     part: slice, *, beam: int, kept: int, scores: torch.Tensor, at_limit: torch.Tensor | None,
                     banned: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """For the sentences of `part`: their `kept` best extensions by score [s, kept], their indices into beam ×
    vocabulary, and with several members each member's log-probability of them [M, s, kept]."""
    log_probs, per_member = ensemble.log_probs(hiddens, softmax, slice(part.start * beam, part.stop * beam))
    log_probs.index_fill_(1, banned, float("-inf"))  # a hypothesis never takes <pad> or <s>
    if at_limit is not None:  # rows at their limit may only end
        eos = log_probs[:, EOS_ID].clone()
        log_probs.masked_fill_(at_limit[part].repeat_interleave(beam)[:, None], float("-inf"))
        log_probs[:, EOS_ID] = eos
    sentences, vocab = part.stop - part.start, log_probs.shape[1]
    candidates = log_probs.view(sentences, beam, vocab).add_(scores[part][:, :, None]).view(sentences, -1)
    top_scores, top = candidates.topk(kept, dim=1)
    if per_member is None:
        return top_scores, top, None
    rows = torch.arange(sentences, device=top.device)[:, None] * beam + top // vocab
    return top_scores, top, per_member[:, rows, top % vocab]


def _select(states: list[State], rows: torch.Tensor) -> list[State]:
    return [state.select(rows) for state in states]


@dataclass
class _Beams:
    """The sentences still searching, in the batch's order: everything a step reads per sentence or per row."""

    positions: list[int]
    """Their positions in the batch (host)."""
    sentences: torch.Tensor
    """[A] the same on the device."""
    scores: torch.Tensor
    """[A, B] each live hypothesis's summed log-probability (-inf: none)."""
    member_scores: torch.Tensor | None
    """[M, A, B] each ensemble member's (None for one model: the same as `scores`)."""
    prefixes: torch.Tensor
    """[A × B, W] each live hypothesis's words so far, padded."""
    tokens: torch.Tensor
    """[A × B] each one's last word."""
    states: list[State]
    max_words: torch.Tensor
    """[A] each sentence's length limit."""
    best_possible: torch.Tensor
    """[A] what a live score s can still reach: s / this."""
    done: torch.Tensor
    """[A] finished: settled, or at its length limit."""
    best: _Complete
    """The complete hypotheses found so far, [A, nbest]."""
    shortest_limit: int
    """The smallest length limit among them (host): below it no row is at its limit."""

    def kept(self, keep: list[int], beam: int, limits: list[int]) -> _Beams:
        """Only the sentences at `keep` (host list of indices into these), with their rows."""
        index = to_device(torch.tensor(keep), self.scores.device)
        rows = (index[:, None] * beam + torch.arange(beam, device=index.device)).flatten()
        positions = [self.positions[k] for k in keep]
        return _Beams(positions, self.sentences[index], self.scores[index],
                      None if self.member_scores is None else self.member_scores[:, index], self.prefixes[rows],
                      self.tokens[rows], _select(self.states, rows), self.max_words[index],
                      self.best_possible[index], self.done[index], self.best.rows(index),
                      min(limits[p] for p in positions))


@torch.no_grad()
def beam_search(ensemble: Ensemble, src: torch.Tensor, src_lengths: torch.Tensor, beam: int, *,
                max_length_ratio: float = 2.0, nbest: int = 1, extra_words: int = 10,
                length_penalty: float = 0.0) -> list[list[Hypothesis]]:
    """The `nbest` best translations of each sentence of the batch, best first (by `Hypothesis.ranking`).

    A hypothesis has at most `max_length_ratio × source length + extra_words` words; at that
    length only </s> may follow. `src_lengths` on the host (as a batch keeps them). The bookkeeping
    stays on the device: each sentence's `nbest` best complete hypotheses are kept in tensors, merged
    with each step's completions by one stable sort, and the host reads one thing a step (which sentences
    are done) and the results once at the end. Finished sentences leave the batch (down to `MIN_ROWS` rows).
    """
    if not 1 <= nbest <= beam:
        raise ValueError(f"nbest must be between 1 and the beam size {beam}, got {nbest}")
    (sentences, members), device = (src.shape[0], len(ensemble.models)), src.device
    limits = [int(length * max_length_ratio) + extra_words for length in src_lengths.tolist()]
    longest, width = max(limits), max(limits) + 1
    max_words = to_device(torch.tensor(limits), device)
    scores = torch.full((sentences, beam), float("-inf"), device=device)
    scores[:, 0] = 0.0  # each sentence's beam before the first word: one live hypothesis, <s>
    beams = _Beams(
        list(range(sentences)), torch.arange(sentences, device=device), scores,
        torch.zeros(members, sentences, beam, device=device) if members > 1 else None,
        torch.full((sentences * beam, width), PAD_ID, dtype=torch.long, device=device),
        torch.full((sentences * beam,), BOS_ID, dtype=torch.long, device=device),
        _select(ensemble.encode(src, src_lengths), torch.arange(sentences, device=device).repeat_interleave(beam)),
        max_words, length_normalizer(max_words + 1, length_penalty),
        torch.zeros(sentences, dtype=torch.bool, device=device),
        _Complete.empty(sentences, nbest, members=members, width=width, device=device), min(limits))
    finished = _Complete.empty(sentences, nbest, members=members, width=width, device=device)
    softmax = ensemble.softmax_weights()
    vocab = ensemble.models[0].tgt_vocab_size
    banned = to_device(torch.tensor([PAD_ID, BOS_ID]), device)
    kept = min(2 * beam, beam * vocab)  # candidates a step keeps: enough for `beam` live ones after </s>
    positions = torch.arange(kept, device=device)

    for length in range(longest + 1):
        active = beams.scores.shape[0]
        hiddens, beams.states = ensemble.step(beams.tokens, beams.states)
        live_scores = beams.scores.masked_fill(beams.done[:, None], float("-inf"))
        at_limit = (length >= beams.max_words) if length >= beams.shortest_limit else None
        parts = [_best_candidates(ensemble, hiddens, softmax, part, beam=beam, kept=kept, scores=live_scores,
                                  at_limit=at_limit, banned=banned) for part in _parts(active, beam, vocab, device)]
        top_scores, top = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        origin, word = top // vocab, top % vocab
        ending = word == EOS_ID
        origin_rows = (torch.arange(active, device=device)[:, None] * beam) + origin
        member_totals = None
        if members > 1:
            member_totals = (beams.member_scores.gather(2, origin.expand(members, -1, -1))
                             + torch.cat([p[2] for p in parts], dim=1))

        # Complete: </s> among the first `beam` candidates, with a finite score.
        completing = ending & (positions < beam) & torch.isfinite(top_scores)
        ranking = (top_scores / length_normalizer(length + 1, length_penalty)).masked_fill(~completing, float("-inf"))
        beams.best = beams.best.merged(ranking, top_scores, member_scores=member_totals, prefixes=beams.prefixes,
                                       origin_rows=origin_rows, words=length)

        # Live: the best `beam` candidates that do not end.
        order = (ending.long() * kept + positions).argsort(dim=1)[:, :beam]
        beams.scores = top_scores.gather(1, order)
        if member_totals is not None:
            beams.member_scores = member_totals.gather(2, order.expand(members, -1, -1))
        chosen_rows = origin_rows.gather(1, order).flatten()
        beams.tokens = word.gather(1, order).flatten()
        beams.prefixes = beams.prefixes[chosen_rows]
        beams.prefixes[:, length] = beams.tokens
        beams.states = _select(beams.states, chosen_rows)

        settled = beams.best.ranking[:, nbest - 1] > beams.scores.max(dim=1).values / beams.best_possible
        beams.done |= settled | (length >= beams.max_words)
        done = beams.done.tolist()  # the one read a step
        searching = [k for k, finished_here in enumerate(done) if not finished_here]
        if not searching:
            break
        if len(searching) < active and len(searching) * beam >= MIN_ROWS:  # the finished leave the batch
            retired = to_device(torch.tensor([k for k, finished_here in enumerate(done) if finished_here]), device)
            finished.place(beams.sentences[retired], beams.best.rows(retired))
            beams = beams.kept(searching, beam, limits)
    finished.place(beams.sentences, beams.best)
    return finished.hypotheses()


@dataclass
class _Complete:
    """Each sentence's `nbest` best complete hypotheses so far, best first, as device tensors."""

    ranking: torch.Tensor
    """[S, N] what they are ranked by (-inf: none yet)."""
    score: torch.Tensor
    """[S, N] their summed log-probabilities."""
    member_scores: torch.Tensor | None
    """[M, S, N] each ensemble member's (None for one model: `score`)."""
    tokens: torch.Tensor
    """[S, N, W] their words, padded."""
    words: torch.Tensor
    """[S, N] how many words each has."""

    @classmethod
    def empty(cls, sentences: int, nbest: int, *, members: int, width: int, device: torch.device) -> _Complete:
        return cls(torch.full((sentences, nbest), float("-inf"), device=device),
                   torch.zeros(sentences, nbest, device=device),
                   torch.zeros(members, sentences, nbest, device=device) if members > 1 else None,
                   torch.full((sentences, nbest, width), PAD_ID, dtype=torch.long, device=device),
                   torch.zeros(sentences, nbest, dtype=torch.long, device=device))

    def merged(self, ranking: torch.Tensor, score: torch.Tensor, *, member_scores: torch.Tensor | None,
               prefixes: torch.Tensor, origin_rows: torch.Tensor, words: int) -> _Complete:
        """The best `nbest` of these and a step's completions (-inf ranking: not complete; their words the
        `prefixes` rows `origin_rows`), earlier ones first among equals. Only the kept ones' words are copied."""
        nbest, width = self.ranking.shape[1], self.tokens.shape[2]
        all_ranking = torch.cat([self.ranking, ranking], dim=1)
        keep = torch.argsort(-all_ranking, dim=1, stable=True)[:, :nbest]  # a few dozen columns
        new = keep >= nbest
        old_tokens = self.tokens.gather(1, keep.clamp(max=nbest - 1)[:, :, None].expand(-1, -1, width))
        new_tokens = prefixes[origin_rows.gather(1, (keep - nbest).clamp(min=0))]
        member_keep = None
        if member_scores is not None:
            member_keep = torch.cat([self.member_scores, member_scores], dim=2).gather(
                2, keep.expand(member_scores.shape[0], -1, -1))
        return _Complete(all_ranking.gather(1, keep), torch.cat([self.score, score], dim=1).gather(1, keep),
                         member_keep, torch.where(new[:, :, None], new_tokens, old_tokens),
                         torch.where(new, words, self.words.gather(1, keep.clamp(max=nbest - 1))))

    def rows(self, index: torch.Tensor) -> _Complete:
        """The sentences at `index`."""
        return _Complete(self.ranking[index], self.score[index],
                         None if self.member_scores is None else self.member_scores[:, index], self.tokens[index],
                         self.words[index])

    def place(self, sentences: torch.Tensor, found: _Complete) -> None:
        """Write `found` (one row per entry of `sentences`) into these rows."""
        self.ranking[sentences] = found.ranking
        self.score[sentences] = found.score
        if self.member_scores is not None:
            self.member_scores[:, sentences] = found.member_scores
        self.tokens[sentences] = found.tokens
        self.words[sentences] = found.words

    def hypotheses(self) -> list[list[Hypothesis]]:
        """Read once: the complete hypotheses of every sentence, best first."""
        ranking, score, words = self.ranking.tolist(), self.score.tolist(), self.words.tolist()
        tokens = self.tokens.tolist()
        if self.member_scores is None:  # one model: its score is the search's
            members = [[[s] for s in row] for row in score]
        else:
            members = self.member_scores.permute(1, 2, 0).tolist()
        return [[Hypothesis(tokens=tokens[s][n][:words[s][n]], score=score[s][n], model_scores=members[s][n],
                            ranking=ranking[s][n]) for n in range(len(ranking[s])) if ranking[s][n] > float("-inf")]
                for s in range(len(ranking))]
