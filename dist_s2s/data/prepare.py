"""`dist-s2s prepare`: raw parallel text → vocabularies, length-bucketed Arrow shards, manifest.

Ray runs the work: in-process (`ray.init()`) by default, or on the cluster named by
`ray.address` / `RAY_ADDRESS` (as under `ray job submit`). The driver only holds word counts;
sentences stream through tasks a chunk at a time, so 12M pairs fit as well as 29k.
On a cluster, data.root and data.out_dir must be on storage every node sees.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections import Counter, defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pyarrow
import ray
import sacremoses
import sentencepiece

import dist_s2s
from dist_s2s.config import Config, DataConfig
from dist_s2s.data.manifest import (
    FORMAT,
    LOCATION_KEYS,
    MANIFEST,
    Manifest,
    ShardEntry,
    VocabFiles,
    data_config_hash,
    write_manifest,
)
from dist_s2s.data.passes import COUNTS, RECEIPT, ShardPlan, encode_shard, read_counts, tokenize_chunk
from dist_s2s.data.shards import read_table, sha256_file
from dist_s2s.data.sources import FileScan, InputPair, check_aligned, chunks, input_pairs, scan_file
from dist_s2s.data.subwords import CodecFiles, train_model, training_sentences
from dist_s2s.data.vocab import SPECIALS, Vocab
from dist_s2s.errors import UserError
from dist_s2s.progress import Progress

log = logging.getLogger(__name__)

WORK = ".work"

_scan = ray.remote(num_cpus=1, max_retries=3)(scan_file)
_tokenize = ray.remote(num_cpus=1, max_retries=3)(tokenize_chunk)
_encode = ray.remote(num_cpus=1, max_retries=3)(encode_shard)


def prepare(config: Config) -> Manifest:
    """Write shards and manifest under data.out_dir; returns the manifest."""
    data = config.data
    out_dir = Path(data.out_dir).resolve()
    pairs = input_pairs(data)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create data.out_dir {out_dir}: {error.strerror}") from None
    if not os.access(out_dir, os.W_OK):
        raise UserError(f"data.out_dir {out_dir} is not writable")
    started_ray = _connect(config)
    try:
        started = time.perf_counter()
        scans = _scan_inputs(pairs, data.chunk_lines)
        content_hash = data_config_hash(data)
        receipts = _pass_tokenize(pairs, scans, data, out_dir / WORK / content_hash[:16])
        src_vocab, tgt_vocab = _build_vocabs(receipts, data, out_dir)
        shard_records = _pass_encode(receipts, data, out_dir)
        manifest = _manifest(pairs, scans, receipts, shard_records, src_vocab=src_vocab, tgt_vocab=tgt_vocab,
                             data=data, content_hash=content_hash, out_dir=out_dir)
        write_manifest(out_dir, manifest)
        shutil.rmtree(out_dir / WORK, ignore_errors=True)
        elapsed = time.perf_counter() - started
        pairs_in = sum(scan.lines for scan, _ in scans)
        log.info("prepare: %d pairs in %.1f s (%.0f pairs/s, %d Ray CPUs) → %s",
                 pairs_in, elapsed, pairs_in / elapsed, ray.cluster_resources().get("CPU", 0), out_dir / MANIFEST)
        return manifest
    finally:
        if started_ray:
            ray.shutdown()


def _connect(config: Config) -> bool:
    """Join the configured cluster, or start Ray in-process; True when this call started it."""
    if ray.is_initialized():
        return False
    address = config.ray.cluster()
    if address:
        log.info("prepare: joining Ray cluster at %s", address)
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True)
    else:
        # address="local": a private instance, even where `ray start` once left a cluster to join.
        ray.init(address="local", num_cpus=config.ray.num_cpus, include_dashboard=False,
                 logging_level=logging.WARNING, object_store_memory=256 * 1024**2)
    return True


def _gather(refs: list, label: str, *, unit: str, pairs_of=None) -> list:
    """ray.get in completion order with progress (tasks done of N; pairs/s when `pairs_of(result)` counts
    a task's pairs), surfacing a task's UserError as the error it is."""
    results: dict = {}
    index = {ref: i for i, ref in enumerate(refs)}
    pending = list(refs)
    with Progress(f"prepare: {label}", len(refs), unit=unit, rate_unit="pairs" if pairs_of else None) as progress:
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                results[index[done[0]]] = ray.get(done[0])
                progress.advance(work=pairs_of(results[index[done[0]]]) if pairs_of else 0)
        except ray.exceptions.RayTaskError as error:
            if isinstance(error.cause, UserError):
                raise UserError(str(error.cause)) from None
            raise
    return [results[i] for i in range(len(refs))]


def _scan_inputs(pairs: list[InputPair], chunk_lines: int) -> list[tuple[FileScan, FileScan]]:
    refs = [_scan.remote(path, chunk_lines) for pair in pairs for path in (pair.src_path, pair.tgt_path)]
    flat = _gather(refs, "scan", unit="files")
    scans = list(zip(flat[0::2], flat[1::2]))
    for pair, (src, tgt) in zip(pairs, scans):
        check_aligned(pair, src, tgt)
    return scans


def _pass_tokenize(pairs, scans, data: DataConfig, work_dir: Path) -> list[tuple[Path, dict]]:
    """Pass 1; returns (chunk work dir, receipt) in input order."""
    jobs: list[tuple[Path, Any]] = []
    reused = 0
    for pair_index, (pair, (src, tgt)) in enumerate(zip(pairs, scans)):
        input_key = f"{pair_index:03d}-{src.sha256[:12]}-{tgt.sha256[:12]}"
        for chunk in chunks(pair_index, src, tgt, data.chunk_lines):
            chunk_dir = work_dir / input_key / f"{chunk.first_line:012d}-{chunk.num_lines}"
            chunk_dir.mkdir(parents=True, exist_ok=True)
            reused += (chunk_dir / RECEIPT).is_file()  # counted before the task could write it
            jobs.append((chunk_dir, _tokenize.remote(pair, pair_index, chunk, data, work_dir=chunk_dir)))
    if reused:
        log.info("prepare: reusing %d of %d tokenized chunks finished by an interrupted run", reused, len(jobs))
    receipts = _gather([ref for _, ref in jobs], "tokenize", unit="chunks",
                       pairs_of=lambda receipt: sum(receipt["rows_in"].values()))
    return [(chunk_dir, receipt) for (chunk_dir, _), receipt in zip(jobs, receipts)]


def _build_vocabs(receipts, data: DataConfig, out_dir: Path) -> tuple[Vocab, Vocab]:
    """The top-K word vocabularies (counted by the tokenize pass), or the SentencePiece models' pieces."""
    if data.vocabulary == "sentencepiece":
        return _train_subword_models(receipts, data, out_dir)
    src_counts, tgt_counts = Counter(), Counter()
    for chunk_dir, _ in receipts:
        src, tgt = read_counts(chunk_dir / COUNTS)
        src_counts.update(src)
        tgt_counts.update(tgt)
    if not src_counts:
        raise UserError(f"split {data.train_split!r} has no usable pairs: no vocabulary can be built "
                        f"(check data.corpora and data.train_split)")
    src_vocab = Vocab.build(src_counts, data.src_vocab_size)
    tgt_vocab = Vocab.build(tgt_counts, data.tgt_vocab_size)
    out_dir.mkdir(parents=True, exist_ok=True)
    src_vocab.save(out_dir / f"vocab.{data.src_lang}.txt")
    tgt_vocab.save(out_dir / f"vocab.{data.tgt_lang}.txt")
    log.info("prepare: vocab %s %d of %d distinct words, %s %d of %d", data.src_lang, len(src_vocab),
             len(src_counts) + len(SPECIALS), data.tgt_lang, len(tgt_vocab), len(tgt_counts) + len(SPECIALS))
    return src_vocab, tgt_vocab


def _train_subword_models(receipts, data: DataConfig, out_dir: Path) -> tuple[Vocab, Vocab]:
    """One SentencePiece model a side on the training split's Moses tokens, in input order (`subwords.py`)."""
    train_pieces = [chunk_dir / piece["file"] for chunk_dir, receipt in receipts for piece in receipt["pieces"]
                    if piece["split"] == data.train_split]
    vocabs = []
    for side, lang, size in (("src", data.src_lang, data.src_vocab_size), ("tgt", data.tgt_lang, data.tgt_vocab_size)):
        tables = (read_table(path) for path in train_pieces)
        vocab = train_model(training_sentences(tables, f"{side}_tokens"), size=size, kind=data.sentencepiece_type,
                            model_path=out_dir / f"spm.{lang}.model")
        vocab.save(out_dir / f"vocab.{lang}.txt")
        vocabs.append(vocab)
    log.info("prepare: SentencePiece %s models, %s %d pieces, %s %d", data.sentencepiece_type, data.src_lang,
             len(vocabs[0]), data.tgt_lang, len(vocabs[1]))
    return vocabs[0], vocabs[1]


def _plan_shards(receipts, data: DataConfig) -> list[ShardPlan]:
    """Cut each (split, bucket) stream, in input order, into shards of data.shard_rows rows.

    Shard boundaries depend only on row counts, never on chunking or task timing.
    """
    streams: dict[tuple[str, int], list[tuple[str, int]]] = defaultdict(list)
    for chunk_dir, receipt in receipts:
        for piece in receipt["pieces"]:
            streams[(piece["split"], piece["bucket"])].append((str(chunk_dir / piece["file"]), piece["rows"]))
    plans = []
    for (split, bucket), pieces in sorted(streams.items()):
        stream_plans: list[list[tuple[str, int, int]]] = [[]]
        filled = 0
        for path, rows in pieces:
            start = 0
            while start < rows:
                if filled == data.shard_rows:
                    stream_plans.append([])
                    filled = 0
                take = min(rows - start, data.shard_rows - filled)
                stream_plans[-1].append((path, start, start + take))
                start += take
                filled += take
        plans += [_plan(split, bucket, index, slices, data=data) for index, slices in enumerate(stream_plans)]
    return plans


def _plan(split: str, bucket: int, index: int, slices, *, data: DataConfig) -> ShardPlan:
    return ShardPlan(split=split, bucket=bucket, path=f"shards/{split}/b{bucket:02d}-{index:05d}.arrow",
                     slices=tuple(slices), keep_text=split != data.train_split)


def _pass_encode(receipts, data: DataConfig, out_dir: Path) -> list[dict]:
    shutil.rmtree(out_dir / "shards", ignore_errors=True)
    (out_dir / MANIFEST).unlink(missing_ok=True)  # the old manifest would describe deleted shards
    codecs = [_codec_files(data, out_dir, side) for side in ("src", "tgt")]
    refs = [_encode.remote(plan, *codecs, reverse_source=data.reverse_source, out_dir=out_dir)
            for plan in _plan_shards(receipts, data)]
    return _gather(refs, "encode", unit="shards", pairs_of=lambda record: record["rows"])


def _codec_files(data: DataConfig, out_dir: Path, side: str) -> CodecFiles:
    lang = data.src_lang if side == "src" else data.tgt_lang
    if data.vocabulary != "sentencepiece":
        return CodecFiles(f"vocab.{lang}.txt")
    return CodecFiles(f"vocab.{lang}.txt", f"spm.{lang}.model", sha256_file(out_dir / f"spm.{lang}.model"))


def _manifest(pairs, scans, receipts, shard_records, *, src_vocab: Vocab, tgt_vocab: Vocab,
              data: DataConfig, content_hash: str, out_dir: Path) -> Manifest:
    rows_in: Counter = Counter()
    filtered: dict[str, Counter] = defaultdict(Counter)
    normalized: Counter = Counter()
    for _, receipt in receipts:
        rows_in.update(receipt["rows_in"])
        for split, reasons in receipt["filtered"].items():
            filtered[split].update(reasons)
        normalized.update(receipt["normalized"])
    splits: dict[str, dict[str, int]] = {}
    for split in sorted(rows_in):
        records = [r for r in shard_records if r["split"] == split]
        totals = {key: sum(r[key] for r in records) for key in ("rows", "src_words", "tgt_words", "src_unk", "tgt_unk")}
        dropped = sum(filtered[split].values())
        if totals["rows"] + dropped != rows_in[split]:  # the accounting invariant: nothing lost silently
            raise RuntimeError(f"split {split}: {rows_in[split]} rows in but {totals['rows']} kept + {dropped} "
                               "filtered")
        splits[split] = {"rows_in": rows_in[split], **totals}
    config_values = {k: v for k, v in asdict(data).items() if k not in LOCATION_KEYS}
    return Manifest(
        format=FORMAT,
        config_hash=content_hash,
        config=config_values,
        versions={"dist_s2s": dist_s2s.__version__, "pyarrow": pyarrow.__version__,
                  "sacremoses": sacremoses.__version__,
                  **({"sentencepiece": sentencepiece.__version__} if data.vocabulary == "sentencepiece" else {})},
        inputs=[
            {"corpus": pair.corpus, "split": pair.split or dict(pair.split_fractions),
             "files": [{"path": str(Path(pair.prefix + f".{lang}")), "lines": scan.lines, "bytes": scan.bytes,
                        "sha256": scan.sha256} for lang, scan in ((data.src_lang, src), (data.tgt_lang, tgt))]}
            for pair, (src, tgt) in zip(pairs, scans)
        ],
        vocab=_vocab_files(data, out_dir, src_vocab=src_vocab, tgt_vocab=tgt_vocab),
        splits=splits,
        filtered={split: dict(sorted(filtered[split].items())) for split in sorted(rows_in)},
        normalized=dict(sorted(normalized.items())),
        bucket_boundaries=data.bucket_boundaries,
        shards=[ShardEntry(**{k: r[k] for k in ("split", "bucket", "path", "rows", "sha256", "src_words", "tgt_words")})
                for r in shard_records],
    )


def _vocab_files(data: DataConfig, out_dir: Path, *, src_vocab: Vocab, tgt_vocab: Vocab) -> VocabFiles:
    src, tgt = (_codec_files(data, out_dir, side) for side in ("src", "tgt"))
    return VocabFiles(src_size=len(src_vocab), tgt_size=len(tgt_vocab), src_file=src.vocab, tgt_file=tgt.vocab,
                      src_sha256=sha256_file(out_dir / src.vocab), tgt_sha256=sha256_file(out_dir / tgt.vocab),
                      specials=list(SPECIALS), kind=data.vocabulary, src_model=src.model, tgt_model=tgt.model,
                      src_model_sha256=src.model_sha256, tgt_model_sha256=tgt.model_sha256)
