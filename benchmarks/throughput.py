"""Training words/s of dist-s2s against a plain PyTorch model of the same size, in one run.

    .venv/bin/python benchmarks/throughput.py --config configs/paper.yaml --batches synthetic --steps 3
    .venv/bin/python benchmarks/throughput.py --config configs/multi30k.yaml --batches runs/data/multi30k

Words are source + target words without padding or <s>/</s> (what the paper's 6,300 words/s
counts). `plain` is what a PyTorch user would write: nn.Embedding, one multi-layer nn.LSTM
each side, one nn.Linear over the whole vocabulary and cross-entropy. `single` is dist-s2s's
own single-device trainer step (per-layer LSTMs, sharded softmax, the paper's clipping).
Each timed step follows `--warmup` untimed ones on the same batches.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from dist_s2s.config import load_config
from dist_s2s.data.batch import Batch
from dist_s2s.data.loader import BatchLoader
from dist_s2s.data.vocab import BOS_ID, EOS_ID, PAD_ID
from dist_s2s.model.seq2seq import Seq2Seq
from dist_s2s.train.clipping import clip_gradients


class PlainSeq2Seq(nn.Module):
    """The baseline: the same sizes, written the obvious way."""

    def __init__(self, config, src_vocab: int, tgt_vocab: int):
        super().__init__()
        self.src_embed = nn.Embedding(src_vocab, config.embedding_dim)
        self.tgt_embed = nn.Embedding(tgt_vocab, config.embedding_dim)
        self.encoder = nn.LSTM(config.embedding_dim, config.hidden_size, config.num_layers, batch_first=True)
        self.decoder = nn.LSTM(config.embedding_dim, config.hidden_size, config.num_layers, batch_first=True)
        self.output = nn.Linear(config.hidden_size, tgt_vocab)
        for parameter in self.parameters():
            nn.init.uniform_(parameter, -config.init_range, config.init_range)

    def forward(self, batch: Batch) -> torch.Tensor:
        packed = pack_padded_sequence(self.src_embed(batch.src), batch.src_lengths, batch_first=True, enforce_sorted=False)
        _, state = self.encoder(packed)
        hidden, _ = self.decoder(self.tgt_embed(batch.tgt_in), state)
        logits = self.output(hidden)
        return nn.functional.cross_entropy(logits.flatten(0, 1), batch.tgt_out.flatten(), ignore_index=PAD_ID,
                                           reduction="sum")


def synthetic_batches(count: int, batch_size: int, src_len: int, tgt_len: int, src_vocab: int, tgt_vocab: int):
    """Equal-length batches (PLATFORM.md's baseline: 128 pairs of 30 + 30 words)."""
    generator = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(count):
        src = torch.randint(4, src_vocab, (batch_size, src_len), generator=generator)
        words = torch.randint(4, tgt_vocab, (batch_size, tgt_len), generator=generator)
        bos = torch.full((batch_size, 1), BOS_ID)
        eos = torch.full((batch_size, 1), EOS_ID)
        batches.append(Batch(src=src, src_lengths=torch.full((batch_size,), src_len),
                             tgt_in=torch.cat([bos, words], 1), tgt_out=torch.cat([words, eos], 1),
                             tgt_lengths=torch.full((batch_size,), tgt_len + 1), lines=torch.zeros(batch_size, 2),
                             step_sentences=batch_size))
    return batches


def real_batches(out_dir: str, count: int, batch_size: int):
    """The first batches of a prepared training split, in the loader's order."""
    loader = iter(BatchLoader(out_dir, "train", batch_size, seed=1))
    return [next(loader) for _ in range(count)]


def time_steps(model: nn.Module, loss_of, batches: list[Batch], warmup: int, max_grad_norm: float) -> dict:
    parameters = list(model.parameters())
    optimizer = torch.optim.SGD(parameters, lr=0.7)
    words = elapsed = 0.0
    for index, batch in enumerate(batches):
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        (loss_of(model, batch) / batch.step_sentences).backward()
        clip_gradients(parameters, max_grad_norm)
        optimizer.step()
        if index >= warmup:
            elapsed += time.perf_counter() - started
            words += batch.words
    return {"words_per_sec": words / elapsed, "seconds_per_step": elapsed / (len(batches) - warmup)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--batches", default="synthetic", help="'synthetic' (30+30 words) or a prepared data.out_dir")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per mode")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--modes", nargs="+", default=["plain", "single"])
    parser.add_argument("--output", help="write the results as JSON")
    args, overrides = parser.parse_known_args()
    config = load_config(args.config, overrides)
    src_vocab, tgt_vocab = config.data.src_vocab_size, config.data.tgt_vocab_size
    count = args.steps + args.warmup
    batches = (synthetic_batches(count, config.train.batch_size, 30, 30, src_vocab, tgt_vocab)
               if args.batches == "synthetic" else real_batches(args.batches, count, config.train.batch_size))
    runs = []
    for mode in args.modes:
        torch.manual_seed(0)
        if mode == "plain":
            model = PlainSeq2Seq(config.model, src_vocab, tgt_vocab)
            result = time_steps(model, lambda m, b: m(b), batches, args.warmup, config.optim.max_grad_norm)
        else:
            model = Seq2Seq(config.model, src_vocab, tgt_vocab)
            result = time_steps(model, lambda m, b: m(b)[0], batches, args.warmup, config.optim.max_grad_norm)
        runs.append({"mode": mode, "threads": torch.get_num_threads(), **result})
        del model
    baseline = next((r["words_per_sec"] for r in runs if r["mode"] == "plain"), None)
    for run in runs:
        ratio = f"  ({run['words_per_sec'] / baseline:.2f}x plain)" if baseline else ""
        print(f"{run['mode']:<7} {run['words_per_sec']:>9.0f} words/s  {run['seconds_per_step']:.2f} s/step  "
              f"{run['threads']} threads{ratio}")
    if args.output:
        with open(args.output, "w") as handle:
            json.dump({"config": args.config, "batches": args.batches, "runs": runs}, handle, indent=2)


if __name__ == "__main__":
    main()
