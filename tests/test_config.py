"""Config: typed sections from YAML, command-line overrides, errors that name the key."""

from __future__ import annotations

import pytest
from conftest import REPO

from dist_s2s.config import Config, describe_options, load_config
from dist_s2s.errors import UserError


def write(tmp_path, text: str):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_defaults_are_the_papers_numbers():
    config = Config()
    assert (config.data.src_vocab_size, config.data.tgt_vocab_size) == (160_000, 80_000)
    assert (config.model.num_layers, config.model.hidden_size, config.model.embedding_dim) == (4, 1000, 1000)
    assert (config.optim.lr, config.optim.max_grad_norm, config.optim.epochs) == (0.7, 5.0, 7.5)
    assert (config.optim.decay_start_epoch, config.optim.halve_lr_every) == (5.0, 0.5)
    assert config.train.batch_size == 128 and config.model.init_range == 0.08
    assert config.data.reverse_source is True
    assert config.data.root == "../shared/data"


SHIPPED = sorted(p.relative_to(REPO / "configs").with_suffix("").as_posix()
                 for p in (REPO / "configs").rglob("*.yaml") if p.name != "study.yaml")


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_config_loads(name):
    config = load_config(REPO / "configs" / f"{name}.yaml")
    assert config.data.corpora, "every config names its corpora"
    if name == "paper-synthetic":  # the WMT'14-sized corpus benchmarks/synthetic_corpus.py writes
        assert config.data.root.startswith("runs/synthetic/")
    else:
        assert config.data.root == "../shared/data"


def test_paper_config_has_the_paper_layout():
    config = load_config(REPO / "configs" / "paper.yaml")
    assert config.parallel.stages == 8
    assert config.data.tgt_vocab_size // config.model.softmax_shards == 20_000


def test_the_news_job_selects_on_newstest2012_and_reports_2013_or_2014_once_downloaded():
    news = load_config(REPO / "configs" / "news.yaml")
    splits = {split: prefix for corpus in news.data.corpora for split, prefix in corpus.splits.items()}
    assert (splits["valid"], news.eval.split, splits["newstest2013"]) == (
        "wmt14_dev/newstest2012", "newstest2013", "wmt14_dev/newstest2013")
    assert not any("multi30k" in prefix for prefix in splits.values()), "no caption of Multi30k's"
    with_2014 = load_config(REPO / "configs" / "news-newstest2014.yaml")
    assert with_2014.eval.split == "newstest2014"
    assert with_2014.data.corpora[:-1] == news.data.corpora, "the same data as the news job, and newstest2014"
    assert with_2014.model == news.model and with_2014.optim == news.optim


def test_overrides_replace_values_with_the_fields_type(tmp_path):
    config = load_config(write(tmp_path, "train: {batch_size: 64}\n"),
                         ["--train.batch_size=32", "--optim.lr=1", "--data.reverse_source=false",
                          "--train.max_steps=5", "--tracking.experiment=123"])
    assert config.train.batch_size == 32
    assert config.optim.lr == 1.0 and isinstance(config.optim.lr, float)
    assert config.data.reverse_source is False
    assert config.train.max_steps == 5
    assert config.tracking.experiment == "123", "a string key keeps digits as text"


def test_a_float_written_with_an_exponent_and_no_dot_is_a_float():
    """PyYAML (YAML 1.1) reads `1e-4` as a string; a float key takes it as the number it means."""
    config = load_config(None, ["--optim.lr=1e-4", "--optim.adam_eps=1E-9"])
    assert config.optim.lr == 1e-4 and config.optim.adam_eps == 1e-9


def test_override_can_reset_an_optional_to_null():
    config = load_config(None, ["--train.max_steps=7", "--train.max_steps=null"])
    assert config.train.max_steps is None


@pytest.mark.parametrize("text, overrides, message", [
    ("data: {rooot: x}\n", [], "unknown config key data.rooot"),
    ("bogus: {a: 1}\n", [], "unknown config key bogus"),
    ("", ["--train.bacth_size=3"], "unknown config key train.bacth_size"),
    ("train: {batch_size: many}\n", [], "config key train.batch_size must be int"),
    ("train: {batch_size: 1.5}\n", [], "config key train.batch_size must be int"),
    ("data: {reverse_source: 1}\n", [], "config key data.reverse_source must be bool"),
    ("data: {corpora: [{name: x, splitz: {}}]}\n", [], "unknown config key data.corpora[0].splitz"),
    ("data: {corpora: [{name: x, splits: {train: 3}}]}\n", [], "config key data.corpora[0].splits.train must be str"),
    ("train: [1, 2]\n", [], "config key train must be a mapping"),
    ("model: {hidden_size: 0}\n", [], "model.hidden_size must be positive"),
    ("parallel: {stages: -2}\n", [], "parallel.stages must be positive"),
    ("data: {bucket_boundaries: [10, 5]}\n", [], "data.bucket_boundaries must be increasing"),
    ("data: {split_seed: -1}\n", [], "data.split_seed must be >= 0"),
    ("train: {batch_size: 16}\nparallel: {data: 2, micro_batches: 8}\n", [],
     "train.batch_size=16 must be at least 2 × parallel.data × parallel.micro_batches = 32"),
    ("data: {max_len: -5}\n", [], "data.max_len must be >= 0"),
    ("serve: {batch_wait_ms: 20, batch_max_wait_ms: 10}\n", [],
     "serve.batch_max_wait_ms must be >= serve.batch_wait_ms .20.0., got 10.0"),
    ("serve: {kernel_cache: -1}\n", [], "serve.kernel_cache must be >= 0"),
    ("data: {corpora: [{file: t/all, split_fractions: {train: 0.5, test: 0.4}}]}\n", [], "must sum to 1"),
    ("data: {corpora: [{file: t/all, splits: {train: t/train}}]}\n", [], "give either `splits` or `file`"),
    ("", ["--train"], "must look like --section.key=value"),
])
def test_bad_config_is_an_error_naming_the_key(tmp_path, text, overrides, message):
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(write(tmp_path, text), overrides)


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(UserError, match="config file not found: .*nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_invalid_yaml_names_the_file(tmp_path):
    with pytest.raises(UserError, match="config.yaml: not valid YAML"):
        load_config(write(tmp_path, "data: [unclosed\n"))


def test_help_lists_every_key_with_its_docstring():
    text = describe_options()
    assert "--data.root=../shared/data" in text
    assert "Directory of raw parallel corpora" in text
    assert "--optim.halve_lr_every=0.5" in text
    assert "--ray.address=None" in text


def test_a_config_states_only_what_differs_from_its_base(tmp_path):
    (tmp_path / "base.yaml").write_text("model: {hidden_size: 64, num_layers: 4}\ntrain: {batch_size: 32}\n")
    (tmp_path / "deep.yaml").write_text("base: base.yaml\nmodel: {num_layers: 1}\n")
    config = load_config(tmp_path / "deep.yaml", ["--train.batch_size=16"])
    assert (config.model.hidden_size, config.model.num_layers, config.train.batch_size) == (64, 1, 16)


@pytest.mark.parametrize("files, message", [
    ({"a.yaml": "base: missing.yaml\n"}, r"config file not found: .*missing\.yaml \(the base of .*a\.yaml\)"),
    ({"a.yaml": "base: b.yaml\n", "b.yaml": "base: a.yaml\n"}, r"config bases form a cycle"),
    ({"a.yaml": "base: [b.yaml]\n"}, r"config key base must be a file name"),
])
def test_a_broken_base_is_named(tmp_path, files, message):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(UserError, match=message):
        load_config(tmp_path / "a.yaml")
