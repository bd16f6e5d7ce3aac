"""`dist-s2s rescore`: rerank an n-best list by the LSTM's log-probability and the list's own score.

    dist-s2s rescore --config ... --checkpoint model.pt --input src.en --nbest smt.nbest --weight 0.5 > best.fr

Paper §3.6: each hypothesis of a baseline's 1000-best list rescored with the LSTM, taking "an
even average of their score and the LSTM's score". Here score = weight × list score +
(1 - weight) × LSTM log-probability (the ensemble's mean, </s> included): weight 0 ranks by the
model alone, weight 1 keeps the list's order, 0.5 is the paper's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from dist_s2s.data.vocab import BOS_ID, EOS_ID, PAD_ID
from dist_s2s.decode.translator import Translator
from dist_s2s.device import to_device
from dist_s2s.errors import UserError
from dist_s2s.progress import Progress


@dataclass
class Candidate:
    sentence: int
    text: str
    features: str
    score: float
    position: int
    """Rank within its sentence in the file (ties in the new score keep this order)."""


def read_nbest(path: Path) -> list[Candidate]:
    """Moses n-best lines `id ||| hypothesis ||| features ||| score`; a malformed line is an error naming it."""
    if not Path(path).is_file():
        raise UserError(f"n-best file not found: {path}")
    candidates, seen = [], {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        fields = [f.strip() for f in line.split("|||")]
        if len(fields) < 4:
            raise UserError(f"{path}:{number}: expected `id ||| hypothesis ||| features ||| score`, got {line[:80]!r}")
        try:
            sentence, score = int(fields[0]), float(fields[-1])
        except ValueError:
            raise UserError(f"{path}:{number}: the id must be an integer and the score a number: "
                            f"{line[:80]!r}") from None
        if candidates and sentence < candidates[-1].sentence:
            raise UserError(f"{path}:{number}: sentence ids must not decrease ({sentence} after "
                            f"{candidates[-1].sentence})")
        seen[sentence] = seen.get(sentence, -1) + 1
        candidates.append(Candidate(sentence, fields[1], fields[2], score, seen[sentence]))
    return candidates


def model_scores(translator: Translator, sources: list[str], candidates: list[Candidate], *, batch_size: int = 64,
                 progress: str | None = None) -> list[float]:
    """log p(candidate | source) under the ensemble (mean of members' log-probabilities per word)."""
    pairs = []
    for candidate in candidates:
        if candidate.sentence >= len(sources):
            raise UserError(f"n-best sentence id {candidate.sentence} has no source line ({len(sources)} lines given)")
        pairs.append((translator.source_ids(sources[candidate.sentence]), translator.target_ids(candidate.text)))
    return pair_log_probs(translator, pairs, batch_size=batch_size, progress=progress)


@torch.no_grad()
def pair_log_probs(translator: Translator, pairs: list[tuple[list[int], list[int]]], *, batch_size: int = 64,
                   progress: str | None = None, normalized: bool = False) -> list[float]:
    """Teacher-forced log p(target words + </s> | source ids) of each pair under the ensemble;
    `progress` names a progress bar / log line counting pairs (None: silent).

    An ensemble's word score is the mean of its members' log-probabilities, the beam search's own score
    (so rescoring an n-best list gives back its scores). That mean is no distribution: its probabilities
    sum to less than 1 wherever the members disagree. `normalized` renormalizes it over the vocabulary
    (the next-word distribution the search ranks by), which a perplexity needs; one model is unchanged."""
    pairs = [(src or [EOS_ID], tgt) for src, tgt in pairs]  # an empty source still conditions, on </s>
    with Progress(progress or "", len(pairs), unit="pairs", show=progress is not None) as bar:
        return _pair_log_probs(translator, pairs, batch_size, bar,
                               normalized=normalized and len(translator.ensemble.models) > 1)


def _pair_log_probs(translator: Translator, pairs: list[tuple[list[int], list[int]]], batch_size: int,
                    bar: Progress, *, normalized: bool) -> list[float]:
    scores = [0.0] * len(pairs)
    order = sorted(range(len(pairs)), key=lambda i: -len(pairs[i][0]))
    device = translator.device
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        src_lengths = torch.tensor([len(pairs[i][0]) for i in chunk])
        tgt_lengths = torch.tensor([len(pairs[i][1]) + 1 for i in chunk])
        src = torch.full((len(chunk), int(src_lengths.max())), PAD_ID, dtype=torch.long)
        tgt_in = torch.full((len(chunk), int(tgt_lengths.max())), PAD_ID, dtype=torch.long)
        tgt_out = tgt_in.clone()
        for row, index in enumerate(chunk):
            s, t = pairs[index]
            src[row, :len(s)] = torch.tensor(s)
            tgt_in[row, :len(t) + 1] = torch.tensor([BOS_ID, *t])
            tgt_out[row, :len(t) + 1] = torch.tensor([*t, EOS_ID])
        # The lengths stay on the host with every batch's (the model cuts its spans and masks there).
        src, tgt_in, tgt_out = (to_device(tensor, device) for tensor in (src, tgt_in, tgt_out))
        per_member, summed = [], None
        for model in translator.ensemble.models:
            hidden, _ = model.decode(tgt_in, model.encode(src, src_lengths))
            log_probs = model.log_probs(hidden.flatten(0, 1)).view(*tgt_out.shape, -1)
            if normalized:  # the whole vocabulary's mean, one member's size at a time
                summed = log_probs if summed is None else summed + log_probs
            else:
                per_member.append(log_probs.gather(2, tgt_out[:, :, None])[:, :, 0])
        if normalized:
            mean = torch.log_softmax(summed / len(translator.ensemble.models), dim=-1)
            word_scores = mean.gather(2, tgt_out[:, :, None])[:, :, 0]
        else:
            word_scores = torch.stack(per_member).mean(dim=0)
        word_scores = word_scores.masked_fill(tgt_out == PAD_ID, 0.0)
        for index, score in zip(chunk, word_scores.sum(dim=1).tolist()):  # one read of the device a batch
            scores[index] = score
        bar.advance(len(chunk))
    return scores


def rerank(candidates: list[Candidate], lstm_scores: list[float], weight: float) -> dict[int, list[Candidate]]:
    """Every sentence's candidates, best first by weight × list score + (1 - weight) × LSTM score
    (ties keep the file's order)."""
    ranked: dict[int, list[tuple[float, int, Candidate]]] = {}
    for candidate, lstm in zip(candidates, lstm_scores):
        combined = weight * candidate.score + (1 - weight) * lstm
        ranked.setdefault(candidate.sentence, []).append((-combined, candidate.position, candidate))
    return {sentence: [c for *_, c in sorted(items, key=lambda item: item[:2])] for sentence, items in ranked.items()}


def rescore_command(translator: Translator, sources: list[str], nbest_path: Path, weight: float) -> list[str]:
    """The new 1-best of every source line (an empty line where the list has no candidate)."""
    if not 0.0 <= weight <= 1.0:
        raise UserError(f"--weight must be between 0 and 1, got {weight}")
    candidates = read_nbest(nbest_path)
    ranked = rerank(candidates, model_scores(translator, sources, candidates, progress="rescore"), weight)
    return [ranked[i][0].text if i in ranked else "" for i in range(len(sources))]
