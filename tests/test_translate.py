"""translate, rescore and evaluate on a model trained on the tiny config, through the command line."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from conftest import REPO

from dist_s2s.cli import main
from dist_s2s.decode.rescore import model_scores, read_nbest, rerank
from dist_s2s.decode.translator import Translator
from dist_s2s.errors import UserError

TINY = str(REPO / "configs" / "tiny.yaml")


@pytest.fixture(scope="module")
def trained(trained_tiny):
    """The session's tiny model trained for 30 steps (conftest): config args, checkpoint, stdout."""
    return trained_tiny


def test_training_ends_by_printing_test2016_bleu_with_its_signature(trained):
    _, _, printed = trained
    assert re.search(r"test2016 beam 2: BLEU \d+\.\d\d \(nrefs:1\|case:mixed\|eff:no\|tok:13a\|smooth:exp\|version:",
                     printed), printed


def test_translate_keeps_every_line_and_handles_empty_long_and_unknown_input(trained, tmp_path, caplog):
    args, checkpoint, _ = trained
    source = tmp_path / "src.en"
    lines = ["A man is riding a bike.", "", "   ", "zxqv blorf quux", " ".join(["dog"] * 400), "Two women ."]
    source.write_text("\n".join(lines) + "\n")
    output = tmp_path / "hyp.fr"
    with caplog.at_level("INFO"):
        assert main(["translate", *args, "--checkpoint", checkpoint, "--beam", "3", "--input", str(source),
                     "--output", str(output)]) == 0
    hypotheses = output.read_text().split("\n")[:-1]
    assert len(hypotheses) == len(lines)
    assert hypotheses[1] == hypotheses[2] == ""
    assert all(hypotheses[i] for i in (0, 3, 5))
    assert "6 lines (2 empty → empty output)" in caplog.text


def test_nbest_output_is_moses_format_best_first(trained, tmp_path):
    args, checkpoint, _ = trained
    (tmp_path / "src.en").write_text("A dog runs.\nA girl sings in the street.\n")
    assert main(["translate", *args, "--checkpoint", checkpoint, checkpoint, "--beam", "4", "--nbest", "3",
                 "--input", str(tmp_path / "src.en"), "--output", str(tmp_path / "out.nbest")]) == 0
    lines = (tmp_path / "out.nbest").read_text().splitlines()
    pattern = re.compile(r"^(\d+) \|\|\| (.*) \|\|\| LSTM0= (-\d+\.\d+) LSTM1= (-\d+\.\d+) \|\|\| (-\d+\.\d+)$")
    matches = [pattern.match(line) for line in lines]
    assert all(matches) and len(lines) == 6
    assert [int(m.group(1)) for m in matches] == [0, 0, 0, 1, 1, 1]
    for sentence in range(2):
        scores = [float(m.group(5)) for m in matches[3 * sentence:3 * sentence + 3]]
        assert scores == sorted(scores, reverse=True)
    assert all(m.group(3) == m.group(4) for m in matches)  # an ensemble of one checkpoint twice


@pytest.fixture(scope="module")
def nbest(trained, tmp_path_factory):
    """Our 4-best list of 5 sentences, and the same list reversed: each sentence's candidates in the
    opposite order, with scores falling in that order (as in any n-best file), the model's worst first."""
    args, checkpoint, _ = trained
    directory = tmp_path_factory.mktemp("nbest")
    sources = ["A man in a red shirt .", "Two children play on the beach .", "A dog .", "People walk in a city .",
               "A woman is cooking ."]
    (directory / "src.en").write_text("\n".join(sources) + "\n")
    assert main(["translate", *args, "--checkpoint", checkpoint, "--beam", "4", "--nbest", "4",
                 "--input", str(directory / "src.en"), "--output", str(directory / "beam.nbest")]) == 0
    by_sentence: dict[str, list[list[str]]] = {}
    for line in (directory / "beam.nbest").read_text().splitlines():
        fields = line.split(" ||| ")
        by_sentence.setdefault(fields[0], []).append(fields)
    reversed_lines = [" ||| ".join([*fields[:3], str(-rank)])
                      for group in by_sentence.values() for rank, fields in enumerate(reversed(group))]
    (directory / "reversed.nbest").write_text("\n".join(reversed_lines) + "\n")
    return directory, sources


def test_rescoring_our_own_nbest_gives_back_the_beam_search_scores(trained, nbest):
    from dist_s2s.config import load_config

    args, checkpoint, _ = trained
    directory, sources = nbest
    config = load_config(TINY, args[2:])
    translator = Translator(config, [Path(checkpoint)])
    candidates = read_nbest(directory / "beam.nbest")
    assert model_scores(translator, sources, candidates) == pytest.approx([c.score for c in candidates], abs=1e-3)


def test_a_length_penalty_orders_the_nbest_by_gnmts_normalized_score_and_favours_longer_outputs(trained):
    """On the tiny model: with eval.length_penalty=1 each 6-best list is sorted by log p / ((5 + |Y|) / 6),
    |Y| counting </s>; the raw score stays what `score` reports."""
    from dist_s2s.config import load_config

    args, checkpoint, _ = trained
    lines = ["A man is riding a bike .", "Two dogs play in the snow .", "A woman sings ."]
    plain = Translator(load_config(TINY, args[2:]), [Path(checkpoint)]).translate(lines, beam=6, nbest=6)
    penalized = Translator(load_config(TINY, [*args[2:], "--eval.length_penalty=1.0"]),
                           [Path(checkpoint)]).translate(lines, beam=6, nbest=6)
    for translations in penalized:
        normalized = [t.score / ((5 + len(t.tokens) + 1) / 6) for t in translations]
        assert normalized == sorted(normalized, reverse=True)
    words = [sum(len(t.tokens) for ts in result for t in ts) for result in (penalized, plain)]
    assert words[0] >= words[1]


def test_a_pair_with_an_empty_source_is_scored_as_conditioned_on_end_of_sentence(trained):
    from dist_s2s.config import load_config
    from dist_s2s.data.vocab import EOS_ID
    from dist_s2s.decode.rescore import pair_log_probs

    args, checkpoint, _ = trained
    translator = Translator(load_config(TINY, args[2:]), [Path(checkpoint)])
    target = translator.target_ids("Un chien court .")
    empty, explicit = pair_log_probs(translator, [([], target), ([EOS_ID], target)])
    assert empty == pytest.approx(explicit, rel=1e-6) and explicit < 0


def test_rescoring_weight_zero_ranks_by_the_model_and_weight_one_keeps_the_files_order(trained, nbest):
    from dist_s2s.config import load_config

    args, checkpoint, _ = trained
    directory, sources = nbest
    translator = Translator(load_config(TINY, args[2:]), [Path(checkpoint)])
    candidates = read_nbest(directory / "reversed.nbest")
    lstm = model_scores(translator, sources, candidates)
    by_model = rerank(candidates, lstm, weight=0.0)
    by_file = rerank(candidates, lstm, weight=1.0)
    for sentence, ranked in by_model.items():
        scores = [lstm[candidates.index(c)] for c in ranked]
        assert scores == sorted(scores, reverse=True)
        assert [c.position for c in by_file[sentence]] == list(range(len(ranked)))
        assert [c.position for c in ranked] == list(reversed(range(len(ranked))))  # the model undoes the reversal


def test_the_rescore_command_writes_the_new_one_best_per_source_line(trained, nbest, tmp_path):
    args, checkpoint, _ = trained
    directory, sources = nbest
    output = tmp_path / "best.fr"
    assert main(["rescore", *args, "--checkpoint", checkpoint, "--input", str(directory / "src.en"),
                 "--nbest", str(directory / "reversed.nbest"), "--weight", "0", "--output", str(output)]) == 0
    beam_best = [c.text for c in read_nbest(directory / "beam.nbest") if c.position == 0]
    assert output.read_text().splitlines() == beam_best  # the model undoes the reversed file scores


def test_evaluate_scores_a_split_and_writes_json_hypotheses_plots_and_an_mlflow_run(trained, tmp_path):
    import mlflow

    args, checkpoint, _ = trained
    output = tmp_path / "scores.json"
    # The config names another split and beam: the command line's win, in the scores and in MLflow.
    assert main(["evaluate", *args, "--eval.split=valid", "--eval.beam_size=5", "--checkpoint", checkpoint,
                 "--split", "test2016", "--beam", "1", "--output", str(output)]) == 0
    scores = json.loads(output.read_text())
    assert {"bleu", "chrf", "signature"} <= scores.keys()
    assert 0 <= scores["bleu"] <= 100 and 0 < scores["chrf"] <= 100
    assert scores["signature"]["bleu"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
    report = Path(scores["report_dir"])
    assert len((report / "hypotheses.txt").read_text().splitlines()) == scores["sentences"] > 0
    assert sum(b["sentences"] for b in scores["bleu_by_length"]) == scores["sentences"]
    assert sum(b["sentences"] for b in scores["bleu_by_rarity"]) == scores["sentences"]
    for plot in ("bleu_by_length.png", "bleu_by_rarity.png", "sentence_pca.png"):
        assert (report / plot).read_bytes()[:4] == b"\x89PNG"
    run_dir = Path(args[-1].split("=", 1)[1])
    run = mlflow.MlflowClient(f"sqlite:///{run_dir}/mlflow.db").get_run(scores["mlflow_run_id"])
    assert run.data.metrics["test2016/bleu"] == scores["bleu"]
    assert (run.data.params["eval.split"], run.data.params["eval.beam_size"]) == ("test2016", "1")
    assert run.info.status == "FINISHED"
    assert not (report / "unsent-metrics.jsonl").exists()


def test_evaluate_decodes_in_bf16_when_asked_and_runs_every_analysis_on_the_fp32_model(trained, tmp_path):
    args, checkpoint, _ = trained
    scores = {}
    for precision in ("fp32", "bf16"):
        output = tmp_path / f"{precision}.json"
        assert main(["evaluate", *args, f"--eval.precision={precision}", "--checkpoint", checkpoint, "--split",
                     "test2016", "--beam", "2", "--output", str(output)]) == 0
        scores[precision] = json.loads(output.read_text())
    assert scores["bf16"]["sentences"] == scores["fp32"]["sentences"] > 0
    assert scores["bf16"]["perplexity"] == scores["fp32"]["perplexity"], "perplexity stays fp32"
    assert abs(scores["bf16"]["bleu"] - scores["fp32"]["bleu"]) < 5


def test_user_errors_do_not_reach_here_as_tracebacks():
    with pytest.raises(UserError):
        read_nbest(Path("/nonexistent.nbest"))


def test_evaluate_reports_the_split_perplexity_the_trainer_would_compute(trained, tmp_path):
    """Teacher-forced through the decoder's own code path; the same number as the model's summed NLL."""
    import math

    from dist_s2s.config import load_config
    from dist_s2s.data.loader import BatchLoader
    from dist_s2s.model.seq2seq import Seq2Seq
    from dist_s2s.train.checkpoint import load_checkpoint

    args, checkpoint, _ = trained
    output = tmp_path / "scores.json"
    assert main(["evaluate", *args, "--checkpoint", checkpoint, "--split", "test2016", "--beam", "1",
                 "--output", str(output)]) == 0
    config = load_config(TINY, args[2:])
    state = load_checkpoint(checkpoint)
    loader = BatchLoader(config.data.out_dir, "test2016", 64, shuffle=False)
    model = Seq2Seq(config.model, config.data.src_vocab_size, config.data.tgt_vocab_size)
    model.load_unsharded_state_dict(state["model"])
    model.eval()
    with torch.no_grad():
        totals = [model(batch) for batch in loader]
    expected = math.exp(sum(float(nll) for nll, _ in totals) / sum(int(n) for _, n in totals))
    assert json.loads(output.read_text())["perplexity"] == pytest.approx(expected, rel=1e-3)


def test_a_subword_model_with_attention_trains_translates_evaluates_and_draws_its_attention(prepared_tiny_subwords,
                                                                                            tmp_path):
    """data.vocabulary=sentencepiece and model.attention=luong end to end on the tiny config: the output is
    detokenized text (no piece marks), BLEU is scored on it, and the attention pictures land in MLflow."""
    import mlflow

    data = prepared_tiny_subwords.data
    args = ["--config", TINY, f"--data.root={data.root}", f"--data.out_dir={data.out_dir}",
            "--data.vocabulary=sentencepiece", "--model.attention=luong", f"--train.run_dir={tmp_path / 'run'}",
            "--eval.attention_plots=2", "--eval.beam_size=2"]
    assert main(["train", *args, "--train.max_steps=30"]) == 0
    checkpoint = str(sorted((tmp_path / "run" / "checkpoints").glob("step-*.pt"))[-1])
    output = tmp_path / "scores.json"
    assert main(["evaluate", *args, "--checkpoint", checkpoint, "--output", str(output)]) == 0
    scores = json.loads(output.read_text())
    assert 0 <= scores["bleu"] <= 100 and scores["sentences"] == 1000
    hypotheses = (Path(scores["report_dir"]) / "hypotheses.txt").read_text(encoding="utf-8")
    assert "▁" not in hypotheses and hypotheses.strip()
    pictures = sorted((Path(scores["report_dir"]) / "attention").glob("*.png"))
    assert len(pictures) == 2 and all(p.read_bytes()[:4] == b"\x89PNG" for p in pictures)
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'run' / 'mlflow.db'}")
    logged = [a.path for a in client.list_artifacts(scores["mlflow_run_id"], "eval")]
    assert sum(path.endswith(".png") and "attention" in path for path in logged) == 2

    source = tmp_path / "src.en"
    source.write_text("A man is riding a bike .\nTwo dogs play in the snow .\n")
    assert main(["translate", *args, "--checkpoint", checkpoint, "--input", str(source),
                 "--output", str(tmp_path / "hyp.fr")]) == 0
    assert len((tmp_path / "hyp.fr").read_text().splitlines()) == 2
    assert len(list((tmp_path / "run" / "translate-attention").glob("*.png"))) == 2
