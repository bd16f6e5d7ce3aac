"""Beam search written the obvious way in plain PyTorch: the baseline `translate_throughput.py` measures beside
dist-s2s's search, as `bench` measures a plain training loop beside the trainer.

What a tutorial or a first implementation does: the batch's hypotheses as rows (sentences × beam), each step the
model's next-word log-probabilities (its own `decode` and `log_probs`), the beam's scores added, the best `beam`
of each sentence's beam × vocabulary by one top-k; a hypothesis that ends leaves for its sentence's list of
finished ones (a Python loop over the chosen candidates) and its row goes on with -inf. A sentence stops when it
has `beam` finished hypotheses or reaches its length limit; the batch runs until every sentence has stopped,
finished ones included. Ranking as dist-s2s ranks (the sum of log-probabilities, or GNMT's length penalty).
"""

from __future__ import annotations

import torch

from dist_s2s.data.vocab import BOS_ID, EOS_ID, PAD_ID
from dist_s2s.model.seq2seq import Seq2Seq


@torch.no_grad()
def plain_beam_search(model: Seq2Seq, src: torch.Tensor, src_lengths: torch.Tensor, beam: int, *,
                      max_length_ratio: float = 2.0, extra_words: int = 10, length_penalty: float = 0.0
                      ) -> list[list[int]]:
    """The best translation of each sentence (word ids, without </s>)."""
    sentences, vocab = src.shape[0], model.tgt_vocab_size
    limits = [int(length * max_length_ratio) + extra_words for length in src_lengths.tolist()]
    state = model.encode(src, src_lengths).select(torch.arange(sentences).repeat_interleave(beam))
    scores = torch.full((sentences, beam), float("-inf"))
    scores[:, 0] = 0.0
    tokens = torch.full((sentences * beam,), BOS_ID)
    history: list[list[int]] = [[] for _ in range(sentences * beam)]
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(sentences)]
    for length in range(max(limits) + 1):
        hidden, state = model.decode(tokens[:, None], state)
        log_probs = model.log_probs(hidden[:, 0])
        log_probs[:, [PAD_ID, BOS_ID]] = float("-inf")
        for sentence in range(sentences):
            if length >= limits[sentence]:  # at the limit only </s> may follow
                rows = slice(sentence * beam, (sentence + 1) * beam)
                eos = log_probs[rows, EOS_ID].clone()
                log_probs[rows] = float("-inf")
                log_probs[rows, EOS_ID] = eos
        candidates = (scores[:, :, None] + log_probs.view(sentences, beam, vocab)).view(sentences, -1)
        top_scores, top = candidates.topk(beam, dim=1)
        origin, word = top // vocab, top % vocab
        rows = (torch.arange(sentences)[:, None] * beam + origin).flatten()
        history = [history[row] + [int(w)] for row, w in zip(rows.tolist(), word.flatten().tolist())]
        scores = top_scores.clone()
        for sentence in range(sentences):
            for k in range(beam):
                if word[sentence, k] == EOS_ID and scores[sentence, k] > float("-inf"):
                    words = history[sentence * beam + k][:-1]
                    ranked = float(scores[sentence, k]) / ((5 + len(words) + 1) / 6) ** length_penalty
                    finished[sentence].append((ranked, words))
                    scores[sentence, k] = float("-inf")
            if len(finished[sentence]) >= beam or length >= limits[sentence]:
                scores[sentence] = float("-inf")
        if bool(torch.isinf(scores).all()):
            break
        tokens = word.flatten()
        state = state.select(rows)
    return [max(found, key=lambda pair: pair[0])[1] if found else [] for found in finished]
