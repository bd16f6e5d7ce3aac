"""`prepare` on real data through in-process Ray: accounting, determinism, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import REPO, SHARED_DATA, tiny_config, write_corpus

from dist_s2s.config import load_config
from dist_s2s.data.manifest import load_manifest, verify_shards
from dist_s2s.data.prepare import prepare
from dist_s2s.data.shards import read_table
from dist_s2s.data.vocab import BOS_ID, EOS_ID, Vocab
from dist_s2s.errors import UserError


def test_multi30k_train_is_fully_accounted_for(prepared_tiny):
    manifest = load_manifest(Path(prepared_tiny.data.out_dir))
    train = manifest.splits["train"]
    assert train["rows_in"] == 29_000
    assert train["rows"] + sum(manifest.filtered["train"].values()) == 29_000
    assert manifest.splits["test2016"]["rows"] == 1000, "evaluation splits are never length-filtered"
    assert sum(s.rows for s in manifest.shards if s.split == "train") == train["rows"]


def test_manifest_lists_shards_vocab_filters_inputs_and_versions(prepared_tiny):
    out_dir = Path(prepared_tiny.data.out_dir)
    manifest = load_manifest(out_dir)
    assert {"split", "path", "rows", "sha256"} <= set(vars(manifest.shards[0]))
    assert manifest.vocab.src_size == 500 and manifest.vocab.tgt_size == 500
    assert set(manifest.filtered) == {"train", "valid", "test2016"}
    source = (SHARED_DATA / "multi30k" / "SOURCE.md").read_text()
    for entry in manifest.inputs:
        for file in entry["files"]:
            assert file["sha256"] in source, "input checksums match the corpus' published ones"
    assert {"dist_s2s", "pyarrow", "sacremoses"} <= set(manifest.versions)
    assert len(manifest.config_hash) == 64
    verify_shards(out_dir, manifest)


def test_shards_are_length_bucketed(prepared_tiny):
    out_dir = Path(prepared_tiny.data.out_dir)
    manifest = load_manifest(out_dir)
    bounds = [0, *manifest.bucket_boundaries, 10**9]
    for shard in manifest.shards:
        table = read_table(out_dir / shard.path).to_pydict()
        longer = [max(s, t) for s, t in zip(table["src_len"], table["tgt_len"])]
        assert all(bounds[shard.bucket] < n <= bounds[shard.bucket + 1] for n in longer)


def test_rows_are_reversed_source_and_wrapped_target_traceable_to_their_line(prepared_tiny):
    out_dir = Path(prepared_tiny.data.out_dir)
    manifest = load_manifest(out_dir)
    src_vocab = Vocab.load(out_dir / manifest.vocab.src_file)
    tgt_vocab = Vocab.load(out_dir / manifest.vocab.tgt_file)
    shard = next(s for s in manifest.shards if s.split == "test2016")
    row = read_table(out_dir / shard.path).slice(0, 1).to_pylist()[0]
    raw_en = (SHARED_DATA / "multi30k" / "test2016.en").read_text().split("\n")[row["line"] - 1]
    raw_fr = (SHARED_DATA / "multi30k" / "test2016.fr").read_text().split("\n")[row["line"] - 1]
    assert row["src_text"] == raw_en and row["tgt_text"] == raw_fr
    from dist_s2s.data.tokenize import tokenize
    expected_src = src_vocab.encode(tokenize(raw_en, "en"))[::-1]
    assert row["src_ids"] == expected_src
    assert row["tgt_ids"] == [BOS_ID, *tgt_vocab.encode(tokenize(raw_fr, "fr")), EOS_ID]
    assert row["src_len"] == len(row["src_ids"]) and row["tgt_len"] == len(row["tgt_ids"]) - 2


def test_train_rows_carry_no_raw_text(prepared_tiny):
    out_dir = Path(prepared_tiny.data.out_dir)
    shard = next(s for s in load_manifest(out_dir).shards if s.split == "train")
    assert read_table(out_dir / shard.path, ["src_text"]).column(0).null_count == shard.rows


@pytest.mark.parametrize("prepared, vocabulary", [("prepared_tiny", "words"),
                                                 ("prepared_tiny_subwords", "sentencepiece")])
def test_same_inputs_and_config_give_byte_identical_output_whatever_the_chunking(request, tmp_path, prepared,
                                                                                vocabulary):
    """Shards, manifest, vocabularies and (with subwords) the SentencePiece models, byte for byte."""
    again = tiny_config(tmp_path, "--data.chunk_lines=3333", f"--data.vocabulary={vocabulary}")
    prepare(again)
    first, second = Path(request.getfixturevalue(prepared).data.out_dir), Path(again.data.out_dir)
    files = sorted(path.relative_to(first) for path in first.rglob("*") if path.is_file())
    assert files == sorted(path.relative_to(second) for path in second.rglob("*") if path.is_file())
    assert {"manifest.json", "vocab.en.txt", "vocab.fr.txt"} <= {str(path) for path in files}
    assert any(path.suffix == ".model" for path in files) == (vocabulary == "sentencepiece")
    for path in files:
        assert (first / path).read_bytes() == (second / path).read_bytes(), path
    assert not (second / ".work").exists(), "intermediate files are removed after success"


def test_forward_source_when_reversal_is_off(prepared_tiny, prepared_tiny_forward):
    reversed_dir, forward_dir = Path(prepared_tiny.data.out_dir), Path(prepared_tiny_forward.data.out_dir)
    path = next(s.path for s in load_manifest(forward_dir).shards if s.split == "train")
    assert read_table(forward_dir / path)["src_ids"].to_pylist()[:50] == \
        [ids[::-1] for ids in read_table(reversed_dir / path)["src_ids"].to_pylist()[:50]]


def bad_corpus_config(tmp_path, *overrides):
    src = b"".join([
        b"A dog runs.\r\n",             # 1 CRLF: kept
        b"Bad \xff byte.\n",            # 2 invalid UTF-8: dropped
        b"\n",                          # 3 empty source: dropped
        b"A cat sleeps.\n",             # 4 empty target: dropped
        b"word " * 20_000 + b"\n",      # 5 100k characters: too long
        b"Two\rparts.\n",               # 6 lone CR: kept
        b"The end.",                    # 7 no final newline: kept
    ])
    tgt = b"Un chien court.\r\nMauvais.\nVide.\n   \nmot\nDeux parties.\nLa fin.\n"
    write_corpus(tmp_path / "raw", "bad/train", src, tgt)
    write_corpus(tmp_path / "raw", "bad/test", "A dog.\n" + "word " * 100 + "\n", "Un chien.\nmot\n")
    (tmp_path / "config.yaml").write_text(
        "data:\n  corpora:\n    - name: bad\n      splits: {train: bad/train, test: bad/test}\n"
        "  src_vocab_size: 50\n  tgt_vocab_size: 50\n  max_len: 50\n")
    return load_config(tmp_path / "config.yaml", [f"--data.root={tmp_path / 'raw'}",
                                                 f"--data.out_dir={tmp_path / 'out'}", *overrides])


def test_bad_lines_are_dropped_and_counted_never_lost(ray_local, tmp_path):
    manifest = prepare(bad_corpus_config(tmp_path))
    assert manifest.filtered["train"] == {"invalid_utf8": 1, "empty_source": 1, "empty_target": 1, "too_long": 1}
    assert manifest.splits["train"] == {**manifest.splits["train"], "rows_in": 7, "rows": 3}
    assert manifest.normalized == {"crlf": 2, "lone_cr": 1}
    assert manifest.splits["test"]["rows"] == 2, "a long test sentence is kept: BLEU needs every line"
    lines = sorted(line for s in manifest.shards if s.split == "train"
                   for line in read_table(tmp_path / "out" / s.path)["line"].to_pylist())
    assert lines == [1, 6, 7]


def test_strict_mode_stops_at_the_first_bad_line_naming_it(ray_local, tmp_path):
    with pytest.raises(UserError, match=r"bad/train\.en:2: invalid UTF-8"):
        prepare(bad_corpus_config(tmp_path, "--data.strict=true"))


def test_misaligned_corpus_is_refused_before_any_work(ray_local, tmp_path):
    write_corpus(tmp_path / "raw", "m/train", "a\nb\nc\n", "x\ny\n")
    (tmp_path / "c.yaml").write_text("data:\n  corpora: [{name: m, splits: {train: m/train}}]\n")
    config = load_config(tmp_path / "c.yaml", [f"--data.root={tmp_path / 'raw'}", f"--data.out_dir={tmp_path / 'o'}"])
    with pytest.raises(UserError, match=r"misaligned corpus m: .*train\.en has 3 lines but .*train\.fr has 2 lines"):
        prepare(config)
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_tatoeba_split_keeps_every_english_sentence_in_one_split(ray_local, tmp_path):
    config = load_config(REPO / "configs" / "tiny.yaml", [
        f"--data.root={SHARED_DATA}", f"--data.out_dir={tmp_path}",
        "--data.corpora=[{name: tatoeba, file: tatoeba_fra/all, "
        "split_fractions: {train: 0.9, valid: 0.05, test: 0.05}}]",
        "--data.max_len=0", "--data.src_vocab_size=50", "--data.tgt_vocab_size=50",
    ])
    manifest = prepare(config)
    assert sum(manifest.splits[s]["rows_in"] for s in ("train", "valid", "test")) == 167_130
    assert sum(manifest.splits[s]["rows"] for s in ("train", "valid", "test")) == 167_130
    english = {}
    lines = (SHARED_DATA / "tatoeba_fra" / "all.en").read_text(encoding="utf-8").split("\n")
    for shard in manifest.shards:
        for line in read_table(tmp_path / shard.path, ["line"])["line"].to_pylist():
            english.setdefault(lines[line - 1], set()).add(shard.split)
    assert all(len(splits) == 1 for splits in english.values()), "no English sentence in two splits"
    assert 0.03 < manifest.splits["test"]["rows"] / 167_130 < 0.07


def test_pretokenized_europarl_counts_its_35_empty_english_lines(ray_local, tmp_path):
    config = load_config(REPO / "configs" / "tiny.yaml", [
        f"--data.root={SHARED_DATA}", f"--data.out_dir={tmp_path}",
        "--data.corpora=[{name: europarl, splits: {train: europarl_v7_sample_tok/train.tok}, pretokenized: true}]",
        "--data.max_len=0",
    ])
    manifest = prepare(config)
    assert manifest.filtered["train"].get("empty_source") == 35
    assert manifest.splits["train"]["rows"] + sum(manifest.filtered["train"].values()) == 20_000
    vocab = Vocab.load(tmp_path / "vocab.fr.txt")
    assert "&apos;" not in vocab.ids and "l'" in vocab.ids, "HTML escapes are undone"


def test_an_output_directory_that_cannot_be_created_is_named(ray_local, tmp_path):
    (tmp_path / "a_file").write_text("")
    config = tiny_config(tmp_path, f"--data.out_dir={tmp_path / 'a_file' / 'out'}")
    with pytest.raises(UserError, match="cannot create data.out_dir .*a_file/out"):
        prepare(config)
