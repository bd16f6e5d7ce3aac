"""Text in, text out: `dist-s2s translate`.

    dist-s2s translate --config configs/multi30k.yaml --checkpoint runs/multi30k/checkpoints/step-00001703.pt \\
        --beam 12 < src.en > hyp.fr
    dist-s2s translate --config ... --checkpoint A.pt B.pt C.pt --nbest 12 --input src.en --output hyp.nbest

Sources get the training data's preprocessing (whitespace folding, sacremoses normalization and
tokenization, lowercasing if configured, the vocabulary's <unk>, reversal); sentences are
decoded many at a time, sorted by length so a batch pads little, and come back in input order,
detokenized. An empty line translates to an empty line (counted). Several checkpoints decode
as an ensemble.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dist_s2s.config import Config, config_from_dict
from dist_s2s.data.manifest import Manifest, load_manifest
from dist_s2s.data.subwords import load_codec
from dist_s2s.data.tokenize import detokenize, tokenize
from dist_s2s.data.vocab import PAD_ID, UNK, UNK_ID, Vocab
from dist_s2s.decode.beam import Ensemble, Hypothesis, beam_search
from dist_s2s.device import pick_device, to_device
from dist_s2s.errors import UserError
from dist_s2s.model.seq2seq import Seq2Seq
from dist_s2s.progress import Progress
from dist_s2s.train.checkpoint import (
    check_compatible,
    load_checkpoint,
    load_weights,
    model_weights,
    vocabulary_compatibility,
)

log = logging.getLogger(__name__)


def load_model(path: Path, manifest: Manifest, device: torch.device) -> Seq2Seq:
    """A checkpoint (either format) as an eval-mode model, refused if trained on another vocabulary."""
    state = load_checkpoint(Path(path))
    check_compatible(Path(path), state["compat"], vocabulary_compatibility(manifest))
    model = Seq2Seq(config_from_dict(state["config"]).model, manifest.vocab.src_size, manifest.vocab.tgt_size)
    load_weights(model, Path(path), model_weights(Path(path), state))
    return model.to(device).eval()


@dataclass
class Translation:
    text: str
    tokens: list[str]
    """Moses tokens (what tokenized BLEU scores)."""
    score: float
    model_scores: list[float] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    """The target ids the model produced, without <s> and </s> (words or subword pieces)."""
    alignment: dict | None = None
    """With attention, where it looked (`serve` fills it in: source and target pieces, weights)."""


class Translator:
    def __init__(self, config: Config, checkpoints: list[Path], device: torch.device | str = "cpu"):
        out_dir = Path(config.data.out_dir)
        manifest = load_manifest(out_dir)
        self.config = config
        self.device = torch.device(device)
        self.src_codec = load_codec(out_dir, manifest.vocab.codec_files("src"))
        self.tgt_codec = load_codec(out_dir, manifest.vocab.codec_files("tgt"))
        self.src_vocab_size = manifest.vocab.src_size
        self.ensemble = Ensemble([load_model(path, manifest, self.device) for path in checkpoints],
                                 config.eval.precision)
        self.prepared = manifest.data_config()  # the data config the vocabulary was built with

    def source_ids(self, text: str) -> list[int]:
        """A raw source line → model input ids, exactly as `prepare` makes them."""
        text = " ".join(text.split())
        tokens = tokenize(text, self.prepared.src_lang, self.prepared.lowercase) if text else []
        ids = self.src_codec.encode(tokens)
        return ids[::-1] if self.prepared.reverse_source else ids

    def source_words(self, ids: list[int]) -> list[str]:
        """Model input ids back to the source's Moses tokens (in reading order)."""
        return self.src_codec.decode(ids[::-1] if self.prepared.reverse_source else ids)

    def target_ids(self, text: str) -> list[int]:
        """A target sentence (a hypothesis written by `translate`, say) → ids; with words, a literal <unk> stays
        one word."""
        if not isinstance(self.tgt_codec, Vocab):
            text = " ".join(text.split())
            tokens = tokenize(text, self.prepared.tgt_lang, self.prepared.lowercase) if text else []
            return self.tgt_codec.encode(tokens)
        tokens = []
        for index, piece in enumerate(" ".join(text.split()).split(UNK)):
            if index:
                tokens.append(UNK)
            if piece.strip():
                tokens += tokenize(piece.strip(), self.prepared.tgt_lang, self.prepared.lowercase)
        return self.tgt_codec.encode(tokens)

    def translate(self, lines: list[str], beam: int, nbest: int = 1, *, progress: str = "translate"
                  ) -> list[list[Translation]]:
        """The `nbest` translations of every line, in input order."""
        return self.translate_ids([self.source_ids(line) for line in lines], beam, nbest, progress=progress)

    def translate_ids(self, sources: list[list[int]], beam: int, nbest: int = 1, *, batch_size: int | None = None,
                      progress: str | None = None, length_penalty: float | None = None) -> list[list[Translation]]:
        """The same from source ids; `progress` names a progress bar / log line (None: silent); `length_penalty`
        overrides eval.length_penalty."""
        batch_size = batch_size or self.config.eval.batch_size
        if length_penalty is None:
            length_penalty = self.config.eval.length_penalty
        results: list[list[Translation]] = [[Translation("", [], 0.0)] for _ in sources]
        with Progress(progress or "", len(sources), unit="sentences", show=progress is not None) as bar:
            bar.advance(sum(1 for ids in sources if not ids))  # empty lines: nothing to decode
            for chunk, src, lengths in length_sorted_batches(sources, batch_size):
                found = beam_search(self.ensemble, to_device(src, self.device), lengths, beam,
                                    max_length_ratio=self.config.eval.max_length_ratio, nbest=nbest,
                                    length_penalty=length_penalty)
                for index, hypotheses in zip(chunk, found):
                    results[index] = [self._text(h) for h in hypotheses]
                bar.advance(len(chunk))
        return results

    def _text(self, hypothesis: Hypothesis) -> Translation:
        tokens = self.tgt_codec.decode(hypothesis.tokens)
        return Translation(detokenize(tokens, self.prepared.tgt_lang), tokens, hypothesis.score,
                           hypothesis.model_scores, hypothesis.tokens)

    def unknown_share(self, lines: list[str]) -> float:
        ids = [i for line in lines for i in self.source_ids(line)]
        return sum(i == UNK_ID for i in ids) / max(1, len(ids))


def length_sorted_batches(sources: list[list[int]], batch_size: int
                          ) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """The non-empty sources, longest first so a batch pads little, `batch_size` at a time: each batch's
    indices into `sources`, its padded source ids [n, longest] and its lengths (host)."""
    order = sorted((i for i, ids in enumerate(sources) if ids), key=lambda i: -len(sources[i]))
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        lengths = torch.tensor([len(sources[i]) for i in chunk])
        src = torch.full((len(chunk), int(lengths.max())), PAD_ID, dtype=torch.long)
        for row, index in enumerate(chunk):
            src[row, :len(sources[index])] = torch.tensor(sources[index])
        yield chunk, src, lengths


def moses_nbest_lines(index: int, translations: list[Translation]) -> list[str]:
    """Moses n-best format: `id ||| hypothesis ||| features ||| score`, one model score feature per member."""
    return [f"{index} ||| {t.text} ||| " + " ".join(f"LSTM{m}= {s:.6f}" for m, s in enumerate(t.model_scores))
            + f" ||| {t.score:.6f}" for t in translations]


def read_lines(path: Path | str | None, stream) -> list[str]:
    """Input lines from a file or a stream; a missing file or invalid UTF-8 is an error naming it."""
    if path and not Path(path).exists():
        raise UserError(f"input file not found: {path}")
    raw = Path(path).read_bytes() if path else stream.buffer.read()
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    decoded = []
    for number, line in enumerate(lines, start=1):
        try:
            decoded.append(line.rstrip(b"\r").decode("utf-8"))
        except UnicodeDecodeError as error:
            raise UserError(f"{path or '<stdin>'}:{number}: invalid UTF-8 at byte {error.start}") from None
    return decoded


def write_lines(lines: list[str], path: Path | str | None, stream) -> None:
    """One line each, to a file or to a stream."""
    text = "".join(line + "\n" for line in lines)
    if path:
        Path(path).write_text(text, encoding="utf-8")
    else:
        stream.write(text)


def translate_command(config: Config, checkpoints: list[str], *, beam: int, nbest: int, input_path: str | None,
                      output_path: str | None, stdin, stdout) -> dict:
    """Translate the input's lines into the output; what was translated, with the translator and the results
    (the command line draws their attention from them)."""
    lines = read_lines(input_path, stdin)
    translator = Translator(config, [Path(c) for c in checkpoints], pick_device(config.train.device))
    results = translator.translate(lines, beam, nbest)
    if nbest > 1:
        write_lines([line for index, found in enumerate(results) for line in moses_nbest_lines(index, found)],
                    output_path, stdout)
    else:
        write_lines([found[0].text for found in results], output_path, stdout)
    empty = sum(1 for line in lines if not line.strip())
    log.info("translate: %d lines (%d empty → empty output), beam %d, %d model(s), %.1f%% source words <unk>",
             len(lines), empty, beam, len(translator.ensemble.models), 100 * translator.unknown_share(lines))
    return {"lines": len(lines), "empty": empty, "translator": translator,
            "sources": [translator.source_ids(line) for line in lines], "translations": [r[0] for r in results]}
