"""Subword vocabularies (Sennrich et al. 2016; SentencePiece, Kudo & Richardson 2018): `data.vocabulary`.

With `sentencepiece`, `prepare` trains one SentencePiece model a side (`data.sentencepiece_type`: unigram
or bpe; `data.src_vocab_size` / `tgt_vocab_size` pieces, the four specials at the ids the word vocabularies
give them) on the training split's Moses tokens, after the tokenize pass and before the encode pass, with
one thread and no sampling, so the same corpus gives the same model bytes. A sentence is Moses-tokenized
as with words, then cut into pieces; decoding joins the pieces back into Moses tokens, which the Moses
detokenizer turns into text, so sacreBLEU scores text exactly as with words. The model files and their
sha256 are in the manifest; a model file that does not match is refused.

A codec turns a sentence's Moses tokens into ids and back: the word `Vocab`, or `SubwordCodec` here.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import sentencepiece

from dist_s2s.data.shards import sha256_file, write_atomically
from dist_s2s.data.vocab import BOS, EOS, PAD, UNK, Vocab
from dist_s2s.errors import UserError

SAMPLED_SENTENCES = 2_000_000
"""At most this many training sentences train a model (the first ones, in corpus order: deterministic)."""


class Codec(Protocol):
    def encode(self, tokens: list[str]) -> list[int]: ...

    def decode(self, ids: list[int]) -> list[str]: ...

    def pieces(self, ids: list[int]) -> list[str]: ...


@dataclass(frozen=True)
class CodecFiles:
    """Where one side's codec lives (relative to data.out_dir), and what its model file must hash to."""

    vocab: str
    model: str | None = None
    model_sha256: str | None = None


class SubwordCodec:
    """Moses tokens ↔ SentencePiece ids."""

    def __init__(self, model_path: Path, expected_sha256: str | None = None):
        if not model_path.is_file():
            raise UserError(f"SentencePiece model not found: {model_path} (re-run `dist-s2s prepare`)")
        if expected_sha256 is not None and sha256_file(model_path) != expected_sha256:
            raise UserError(f"SentencePiece model {model_path} does not match its manifest (sha256 differs): "
                            "it was replaced or corrupted; re-run `dist-s2s prepare`")
        self.processor = sentencepiece.SentencePieceProcessor(model_file=str(model_path))

    def encode(self, tokens: list[str]) -> list[int]:
        return self.processor.encode(" ".join(tokens)) if tokens else []

    def decode(self, ids: list[int]) -> list[str]:
        return self.processor.decode(list(ids)).split()

    def pieces(self, ids: list[int]) -> list[str]:
        """Each id's piece (▁ starts a word)."""
        return [self.processor.id_to_piece(i) for i in ids]


def load_codec(out_dir: Path, files: CodecFiles) -> Codec:
    """A side's codec from prepared data: its SentencePiece model where there is one, else its word vocabulary."""
    if files.model is None:
        return Vocab.load(Path(out_dir) / files.vocab)
    return SubwordCodec(Path(out_dir) / files.model, files.model_sha256)


def train_model(sentences: Iterable[list[str]], *, size: int, kind: str, model_path: Path) -> Vocab:
    """Train a side's model on its training sentences (Moses tokens), write it to `model_path`, and return its
    pieces as a vocabulary, each counted over those sentences."""
    lines = [" ".join(tokens) for tokens in sentences if tokens]
    if not lines:
        raise UserError(f"no training sentences to train the SentencePiece model {model_path.name} on")
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=size, model_type=kind,
        character_coverage=1.0, normalization_rule_name="identity", hard_vocab_limit=False,
        input_sentence_size=SAMPLED_SENTENCES, shuffle_input_sentence=False, num_threads=1, minloglevel=2,
        pad_id=0, unk_id=1, bos_id=2, eos_id=3, pad_piece=PAD, unk_piece=UNK, bos_piece=BOS, eos_piece=EOS)
    write_atomically(model_path, model.getvalue())
    processor = sentencepiece.SentencePieceProcessor(model_proto=model.getvalue())
    counts = Counter(piece for ids in processor.encode(lines) for piece in ids)
    pieces = [processor.id_to_piece(i) for i in range(4, processor.get_piece_size())]
    return Vocab(pieces, [counts[i] for i in range(4, processor.get_piece_size())])


def training_sentences(tables: Iterator, column: str) -> Iterator[list[str]]:
    """The Moses tokens of one side, table after table (the tokenize pass's training pieces, in input order)."""
    for table in tables:
        yield from table.column(column).to_pylist()
