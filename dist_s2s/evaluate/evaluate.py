"""`dist-s2s evaluate`: translate a prepared split and score it.

    dist-s2s evaluate --config configs/multi30k.yaml --checkpoint runs/multi30k/checkpoints/step-00001703.pt \\
        --split test2016 --beam 12 --output scores.json

Scores: sacreBLEU BLEU and chrF on detokenized output against the raw references, with their
signatures (comparable across papers), and BLEU on Moses tokens (`tokenize=none`), the paper's
multi-bleu convention, labelled as such. Hypotheses, scores and the analyses' plots go to
`<run_dir>/eval/<split>-beam<N>/` and to an MLflow run beside the training run.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow as pa
from sacrebleu.metrics import BLEU, CHRF

from dist_s2s.config import Config
from dist_s2s.data.manifest import Manifest, load_manifest
from dist_s2s.data.shards import read_table
from dist_s2s.data.tokenize import tokenize
from dist_s2s.decode.rescore import pair_log_probs
from dist_s2s.decode.translator import Translator
from dist_s2s.device import pick_device
from dist_s2s.errors import UserError
from dist_s2s.evaluate import analysis
from dist_s2s.evaluate.attention import attention_plots
from dist_s2s.train.tracking import RUN_ID_FILE, Tracker

log = logging.getLogger(__name__)


def split_rows(out_dir: Path, split: str, manifest: Manifest | None = None) -> pa.Table:
    """A prepared split's rows in corpus order, with their raw text."""
    manifest = manifest or load_manifest(out_dir)
    if split not in manifest.splits:
        raise UserError(f"split {split!r} is not prepared in {out_dir} (prepared: "
                        f"{', '.join(sorted(manifest.splits))})")
    tables = [read_table(out_dir / shard.path) for shard in manifest.shards_of(split)]
    table = pa.concat_tables(tables).select(["src_ids", "tgt_ids", "src_len", "input", "line", "src_text", "tgt_text"])
    if table.num_rows and table.column("tgt_text").null_count:
        raise UserError(f"split {split!r} in {out_dir} keeps no reference text (the training split cannot be "
                        "evaluated)")
    return table.sort_by([("input", "ascending"), ("line", "ascending")])


def evaluate(config: Config, checkpoints: list[str], *, split: str | None = None, beam: int | None = None,
             output: str | None = None) -> dict[str, Any]:
    split = split or config.eval.split
    beam = beam or config.eval.beam_size
    # The run's params say what was evaluated (MLflow refuses a second, different eval.split).
    config = replace(config, eval=replace(config.eval, split=split, beam_size=beam))
    out_dir = Path(config.data.out_dir)
    manifest = load_manifest(out_dir)
    rows = split_rows(out_dir, split, manifest)
    translator = Translator(config, [Path(c) for c in checkpoints], pick_device(config.train.device))
    src_ids = [list(ids) for ids in rows.column("src_ids").to_pylist()]
    references = rows.column("tgt_text").to_pylist()

    started = time.perf_counter()
    translations = [found[0] for found in translator.translate_ids(src_ids, beam, progress=f"evaluate {split}")]
    seconds = time.perf_counter() - started
    perplexity = split_perplexity(translator, src_ids, rows.column("tgt_ids").to_pylist())
    hypotheses = [t.text for t in translations]

    scores = {"split": split, "beam": beam, "checkpoints": [str(c) for c in checkpoints], "sentences": len(hypotheses),
              "filtered_from_split": manifest.filtered_rows(split),
              **corpus_scores(translations, references, translator.prepared), "perplexity": round(perplexity, 3),
              "sentences_per_sec": round(len(hypotheses) / max(seconds, 1e-9), 2)}

    report_dir = Path(config.train.run_dir) / "eval" / f"{split}-beam{beam}"
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "hypotheses.txt").write_text("".join(h + "\n" for h in hypotheses), encoding="utf-8")
    plots = _analyses(translator, rows, src_ids, hypotheses=hypotheses, references=references,
                      report_dir=report_dir, scores=scores)
    plots += attention_plots(translator, src_ids, translations, count=config.eval.attention_plots,
                             out_dir=report_dir / "attention")
    scores["report_dir"] = str(report_dir)
    (report_dir / "scores.json").write_text(json.dumps(scores, indent=2) + "\n")

    scores["mlflow_run_id"] = _track(config, report_dir, scores, [report_dir / "hypotheses.txt",
                                                                   report_dir / "scores.json", *plots])
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(json.dumps(scores, indent=2) + "\n")
    log.info("evaluate: %s, beam %d, %d sentences (%.1f/s): BLEU %.2f, chrF %.2f, tokenized BLEU %.2f",
             split, beam, len(hypotheses), scores["sentences_per_sec"], scores["bleu"], scores["chrf"],
             scores["tokenized_bleu"])
    return scores


def validation_bleu(config: Config) -> Callable[[Path], float]:
    """sacreBLEU BLEU of train.valid_split decoded at train.best_beam by a checkpoint file: how the trainer ranks
    checkpoints under train.best_metric=bleu (the split is read once; each call loads one checkpoint)."""
    rows = split_rows(Path(config.data.out_dir), config.train.valid_split)
    src_ids = [list(ids) for ids in rows.column("src_ids").to_pylist()]
    references = rows.column("tgt_text").to_pylist()
    device = pick_device(config.train.device)

    def score(checkpoint: Path) -> float:
        translator = Translator(config, [Path(checkpoint)], device)
        hypotheses = [found[0].text for found in translator.translate_ids(src_ids, config.train.best_beam)]
        return round(BLEU().corpus_score(hypotheses, [references]).score, 2)

    return score


def corpus_scores(translations, references: list[str], prepared) -> dict[str, Any]:
    """sacreBLEU BLEU and chrF of the detokenized translations against the raw references, with signatures, and
    BLEU on Moses tokens (the paper's multi-bleu convention; `force`: these are tokenized on purpose)."""
    hypotheses = [t.text for t in translations]
    bleu, chrf = BLEU(), CHRF()
    bleu_score, chrf_score = bleu.corpus_score(hypotheses, [references]), chrf.corpus_score(hypotheses, [references])
    tokenized_refs = [" ".join(tokenize(" ".join(r.split()), prepared.tgt_lang, prepared.lowercase))
                      for r in references]
    tokenized_bleu = BLEU(tokenize="none", force=True).corpus_score([" ".join(t.tokens) for t in translations],
                                                                    [tokenized_refs])
    return {
        "bleu": round(bleu_score.score, 2), "chrf": round(chrf_score.score, 2),
        "length_ratio": round(bleu_score.sys_len / max(1, bleu_score.ref_len), 3),
        "signature": {"bleu": str(bleu.get_signature()), "chrf": str(chrf.get_signature())},
        "tokenized_bleu": round(tokenized_bleu.score, 2),
        "tokenized_bleu_note": "BLEU on Moses tokens (tokenize=none), the paper's multi-bleu convention; "
                               "not comparable with sacreBLEU",
    }


def _track(config: Config, report_dir: Path, scores: dict[str, Any], artifacts: list[Path]) -> str | None:
    """The evaluation as an MLflow run of its own (MLflow refuses a second, different eval.split in one run)."""
    split = scores["split"]
    (report_dir / RUN_ID_FILE).unlink(missing_ok=True)
    tracker = Tracker(config, report_dir, run_name=f"evaluate {split} beam {scores['beam']}",
                      store_dir=Path(config.train.run_dir))
    tracker.log_params({"eval.checkpoints": json.dumps(scores["checkpoints"]),
                        "sacrebleu.signature": scores["signature"]["bleu"]})
    tracker.log_metrics({f"{split}/bleu": scores["bleu"], f"{split}/chrf": scores["chrf"],
                         f"{split}/tokenized_bleu": scores["tokenized_bleu"], f"{split}/ppl": scores["perplexity"],
                         **{f"phrases/{k}": v for k, v in scores["phrase_grouping"].items()}},
                        step=0)
    for path in artifacts:
        tracker.log_artifact(path, "eval")
    tracker.finish()
    return tracker.run_id


def split_perplexity(translator: Translator, src_ids: list[list[int]], tgt_ids: list[list[int]]) -> float:
    """exp(-mean log-probability) of the references' words and </s> (§3.6's test perplexity), teacher-forced
    through the ensemble (its mean log-probabilities renormalized: a distribution); `tgt_ids` as prepared,
    <s> … </s>."""
    pairs = [(src, tgt[1:-1]) for src, tgt in zip(src_ids, tgt_ids)]
    log_prob = sum(pair_log_probs(translator, pairs, progress="perplexity", normalized=True))
    return math.exp(-log_prob / sum(len(t) + 1 for _, t in pairs))


def _analyses(translator: Translator, rows: pa.Table, src_ids: list[list[int]], *, hypotheses: list[str],
              references: list[str], report_dir: Path, scores: dict[str, Any]) -> list[Path]:
    lengths = [len(translator.source_words(ids)) for ids in src_ids]  # words, whatever the vocabulary
    by_length = analysis.binned_bleu(lengths, hypotheses, references, analysis.length_edges(lengths))
    ranks = analysis.frequency_rank(src_ids, translator.src_vocab_size)
    by_rarity = analysis.binned_bleu(ranks, hypotheses, references, analysis.quantile_edges(ranks, 6)) \
        if len(ranks) >= 6 else []
    scores["bleu_by_length"], scores["bleu_by_rarity"] = by_length, by_rarity
    plots = [analysis.plot_bins(by_length, "source sentence length (words)", "BLEU by sentence length",
                                report_dir / "bleu_by_length.png", whole=True)]
    if by_rarity:
        plots.append(analysis.plot_bins(by_rarity, "average frequency rank of the source words",
                                        "BLEU by word rarity", report_dir / "bleu_by_rarity.png"))
    vectors = analysis.sentence_vectors(translator)
    scores["phrase_grouping"] = {**analysis.meaning_grouping(vectors), **analysis.order_sensitivity(vectors)}
    plots.append(analysis.plot_pca(analysis.pca_2d(vectors), analysis.PHRASES, report_dir / "sentence_pca.png"))
    return plots
