"""Typed configuration: dataclass sections, loaded from YAML, overridden by `--section.key=value`.

Every number that comes from the paper is a default here, with the section of
Sutskever, Vinyals & Le (2014) it comes from; `configs/*.yaml` override them by size.
Unknown keys and wrong types are errors that name the full key (`data.corpora[0].splits`).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import hashlib
import inspect
import json
import os
import textwrap
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from dist_s2s.errors import UserError


@dataclass
class CorpusConfig:
    """One parallel corpus: files `<prefix>.<src_lang>` and `<prefix>.<tgt_lang>` under data.root."""

    name: str = ""
    """Label used in the manifest and in error messages."""
    splits: dict[str, str] = field(default_factory=dict)
    """Output split → file prefix relative to data.root, e.g. `train: multi30k/train`."""
    file: str = ""
    """File prefix of a corpus with no official split (Tatoeba); divided by `split_fractions`."""
    split_fractions: dict[str, float] = field(default_factory=dict)
    """Output split → fraction of distinct source sentences, for `file`; must sum to 1."""
    pretokenized: bool = False
    """Lines are Moses-tokenized and HTML-escaped (the Europarl sample): detokenize first."""


@dataclass
class DataConfig:
    root: str = "../shared/data"
    """Directory of raw parallel corpora (`dist-s2s download` fills it)."""
    out_dir: str = "runs/data/default"
    """Where `prepare` writes vocabularies, Arrow shards and manifest.json."""
    src_lang: str = "en"
    """Source language code: file suffix and sacremoses language."""
    tgt_lang: str = "fr"
    """Target language code: file suffix and sacremoses language."""
    corpora: list[CorpusConfig] = field(default_factory=list)
    """Corpora to prepare; splits of the same name from several corpora are concatenated."""
    train_split: str = "train"
    """The split vocabularies are built from and the trainer reads; the only split length-filtered."""
    src_vocab_size: int = 160_000
    """Source vocabulary size including <pad> <unk> <s> </s> (paper §3.1: 160,000)."""
    tgt_vocab_size: int = 80_000
    """Target vocabulary size including <pad> <unk> <s> </s> (paper §3.1: 80,000)."""
    reverse_source: bool = True
    """Store source sentences reversed (paper §3.3: the key trick)."""
    lowercase: bool = False
    """Lowercase before tokenizing (the paper kept case)."""
    max_len: int = 80
    """Drop (and count) train pairs with more tokens on either side; 0 keeps all."""
    bucket_boundaries: list[int] = field(default_factory=lambda: [10, 15, 20, 30, 40, 60])
    """Upper length bounds of the shard buckets, by the longer side (paper §3.4: batches of similar length)."""
    shard_rows: int = 100_000
    """Rows per Arrow shard at most."""
    chunk_lines: int = 10_000
    """Input lines per Ray task: the unit of parallel work and of retry."""
    split_seed: int = 0
    """Salt of the hash that assigns source sentences to splits of an unsplit corpus."""
    strict: bool = False
    """Fail on invalid UTF-8 or an empty side instead of dropping and counting the pair."""


@dataclass
class ModelConfig:
    embedding_dim: int = 1000
    """Word embedding size (paper §3.4: 1000)."""
    hidden_size: int = 1000
    """LSTM cells per layer (paper §3.4: 1000)."""
    num_layers: int = 4
    """LSTM layers in the encoder and in the decoder each (paper §3.4: 4)."""
    softmax_shards: int = 4
    """Vocabulary slices of the output softmax (paper §3.5: 4 GPUs, 1000×20000 each)."""
    init_range: float = 0.08
    """Parameters start uniform in [-init_range, init_range] (paper §3.4)."""
    dropout: float = 0.0
    """Share of each LSTM layer's input and of the softmax's input dropped in training, never the
    recurrent connections (Zaremba et al. 2014); 0 is the paper's model."""


@dataclass
class OptimConfig:
    lr: float = 0.7
    """SGD learning rate, no momentum (paper §3.4)."""
    max_grad_norm: float = 5.0
    """Rescale the gradient to this L2 norm when larger (paper §3.4)."""
    decay_start_epoch: float = 5.0
    """Epochs at the initial rate before halving starts (paper §3.4: 5)."""
    halve_lr_every: float = 0.5
    """Halve the rate every this many epochs after decay_start_epoch (paper §3.4: 0.5)."""
    epochs: float = 7.5
    """Training length in epochs (paper §3.4: 7.5)."""


@dataclass
class ParallelConfig:
    stages: int = 1
    """Pipeline stages (paper §3.5 layout: 8 = 4 LSTM layers + 4 softmax shards)."""
    data: int = 1
    """Data-parallel replicas of the whole pipeline."""
    micro_batches: int = 1
    """Micro-batches a batch is split into for the 1f1b schedule (the wavefront keeps the batch whole)."""
    schedule: Literal["1f1b", "wavefront"] = "wavefront"
    """`1f1b`: DeepSpeed's schedule over micro-batches; `wavefront`: the paper's (§3.5), each layer's stage
    handing every time chunk on as soon as it is computed, the batch of 128 kept whole."""
    chunk_steps: int = 4
    """Wavefront: time steps of the source and of the target in one chunk (the unit a stage hands on;
    measured on multi30k, 2 stages: 3 → 0.75, 4–6 → 0.81, 10 → 0.77, 16 → 0.74 scaling efficiency)."""
    placement: Literal["auto", "chain", "colocated"] = "auto"
    """Wavefront: `chain` (LSTM layers, then softmax shards, in order: with layers + shards stages the
    paper's layout), `colocated` (every stage holds layers and a share of the vocabulary), or `auto`:
    colocated when every stage can hold a layer and a shard, else chain."""
    timeout_s: int = 300
    """Seconds a rank waits for the others before failing: a dead rank ends the job, never hangs it."""


@dataclass
class TrainConfig:
    run_dir: str = "runs/default"
    """Checkpoints, logs and the default MLflow store of this run."""
    batch_size: int = 128
    """Sentences per batch, all of similar length (paper §3.4: 128)."""
    seed: int = 1
    """Seed of parameter init and batch order."""
    max_steps: int | None = None
    """Stop after this many steps instead of after optim.epochs (tests, benchmarks)."""
    log_every: int = 10
    """Steps between console/MLflow log lines."""
    valid_every: int = 500
    """Steps between validation perplexity evaluations."""
    checkpoint_every: int = 1000
    """Steps between checkpoints (one is also written at the end)."""
    keep_checkpoints: int = 3
    """Most recent checkpoints kept in run_dir/checkpoints."""
    valid_split: str = "valid"
    """Prepared split whose perplexity is reported every valid_every steps."""
    resume: bool = False
    """Continue from the last checkpoint in run_dir, data cursor included."""
    device: str = "auto"
    """`auto` (CUDA when available), `cpu`, or a torch device string."""
    precision: Literal["fp32", "tf32", "bf16"] = "fp32"
    """Matrix products in fp32 (the paper; every exactness test), TF32 (CUDA), or bf16 (autocast; the
    log-sum-exp, the shard fold, the loss and the gradient norm stay fp32, parameters and updates fp32)."""


@dataclass
class EvalConfig:
    split: str = "test2016"
    """Prepared split that `evaluate` translates and scores."""
    beam_size: int = 12
    """Left-to-right beam width (paper §3.3: 1–12)."""
    max_length_ratio: float = 2.0
    """Stop a hypothesis at this many times the source length (plus 10)."""
    length_penalty: float = 0.0
    """GNMT's α (Wu et al. 2016): rank finished hypotheses by log p / ((5 + length) / 6)^α;
    0 ranks by log p as the paper did, 1 comes close to dividing by the length."""
    batch_size: int = 64
    """Sentences decoded together."""
    after_training: bool = False
    """When training ends, evaluate the final checkpoint on eval.split at eval.beam_size (rank 0)."""


@dataclass
class TrackingConfig:
    uri: str | None = None
    """MLflow tracking URI; default sqlite in train.run_dir; MLFLOW_TRACKING_URI wins when set."""
    experiment: str = "dist-s2s"
    """MLflow experiment name."""


@dataclass
class RayConfig:
    address: str | None = None
    """Ray cluster to join (`auto`, `ray://host:10001`); RAY_ADDRESS works too; unset: in-process."""
    num_cpus: int | None = None
    """CPUs of the in-process Ray instance (unset: all)."""

    def cluster(self) -> str | None:
        """The cluster to join: ray.address, else RAY_ADDRESS; None means Ray in-process."""
        return self.address or os.environ.get("RAY_ADDRESS")


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Read a YAML config (or the defaults when `path` is None) and apply `--section.key=value`."""
    raw = _read_yaml(Path(path)) if path is not None else {}
    for override in overrides:
        _apply_override(raw, override)
    return config_from_dict(raw)


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file's mapping; `base: other.yaml` (relative to the file) is read first and the
    file's own values replace its values key by key, so a variant states only what differs."""
    if not path.is_file():
        raise UserError(f"config file not found: {path}" + (f" (the base of {seen[-1]})" if seen else ""))
    if path.resolve() in seen:
        raise UserError(f"{path}: config bases form a cycle ({' → '.join(str(p) for p in (*seen, path))})")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise UserError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    base = raw.pop("base", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise UserError(f"{path}: config key base must be a file name, got {base!r}")
    return _merged(_read_yaml(path.parent / base, (*seen, path.resolve())), raw)


def _merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """`base` with `changes` laid over it: mappings merge key by key, anything else is replaced."""
    merged = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merged(merged[key], value)
        else:
            merged[key] = value
    return merged


def config_from_dict(raw: dict[str, Any]) -> Config:
    """A config from its dict form (YAML, or the copy a checkpoint keeps), type-checked and validated."""
    config = _coerce(raw, Config, "")
    validate(config)
    return config


def validate(config: Config) -> None:
    """Checks across fields that types alone cannot express."""
    positive = {
        "data.src_vocab_size": config.data.src_vocab_size,
        "data.tgt_vocab_size": config.data.tgt_vocab_size,
        "data.shard_rows": config.data.shard_rows,
        "data.chunk_lines": config.data.chunk_lines,
        "model.embedding_dim": config.model.embedding_dim,
        "model.hidden_size": config.model.hidden_size,
        "model.num_layers": config.model.num_layers,
        "model.softmax_shards": config.model.softmax_shards,
        "model.init_range": config.model.init_range,
        "optim.lr": config.optim.lr,
        "optim.max_grad_norm": config.optim.max_grad_norm,
        "optim.halve_lr_every": config.optim.halve_lr_every,
        "optim.epochs": config.optim.epochs,
        "parallel.stages": config.parallel.stages,
        "parallel.data": config.parallel.data,
        "parallel.micro_batches": config.parallel.micro_batches,
        "parallel.chunk_steps": config.parallel.chunk_steps,
        "parallel.timeout_s": config.parallel.timeout_s,
        "train.batch_size": config.train.batch_size,
        "train.log_every": config.train.log_every,
        "train.valid_every": config.train.valid_every,
        "train.checkpoint_every": config.train.checkpoint_every,
        "train.keep_checkpoints": config.train.keep_checkpoints,
        "eval.beam_size": config.eval.beam_size,
        "eval.max_length_ratio": config.eval.max_length_ratio,
        "eval.batch_size": config.eval.batch_size,
    }
    for key, value in positive.items():
        if value <= 0:
            raise UserError(f"config key {key} must be positive, got {value}")
    for key, value in {"data.src_vocab_size": config.data.src_vocab_size,
                       "data.tgt_vocab_size": config.data.tgt_vocab_size}.items():
        if value < 5:
            raise UserError(f"config key {key} must leave room for 4 specials and a word, got {value}")
    for key, value in {"data.max_len": config.data.max_len, "data.split_seed": config.data.split_seed,
                       "optim.decay_start_epoch": config.optim.decay_start_epoch,
                       "eval.length_penalty": config.eval.length_penalty}.items():
        if value < 0:
            raise UserError(f"config key {key} must be >= 0, got {value}")
    if not 0 <= config.model.dropout < 1:
        raise UserError(f"config key model.dropout must be in [0, 1), got {config.model.dropout}")
    if config.train.max_steps is not None and config.train.max_steps <= 0:
        raise UserError(f"config key train.max_steps must be positive, got {config.train.max_steps}")
    units = config.model.num_layers + config.model.softmax_shards
    if config.parallel.stages > units:
        raise UserError(f"config key parallel.stages={config.parallel.stages} exceeds the {units} units "
                        "a stage can hold "
                        f"(model.num_layers + model.softmax_shards = {config.model.num_layers} + "
                        f"{config.model.softmax_shards}): at most one LSTM layer or softmax shard a stage")
    parts = config.parallel.data * config.parallel.micro_batches
    if config.train.batch_size < 2 * parts:
        raise UserError(f"config key train.batch_size={config.train.batch_size} must be at least 2 × parallel.data × "
                        f"parallel.micro_batches = {2 * parts} (an epoch's smallest batch has batch_size/2 sentences)")
    if config.parallel.schedule == "wavefront" and config.parallel.micro_batches != 1:
        raise UserError(f"config key parallel.micro_batches={config.parallel.micro_batches}: the wavefront schedule "
                        "keeps the batch whole (set parallel.micro_batches=1, or parallel.schedule=1f1b)")
    if config.parallel.placement == "colocated" and config.parallel.stages > min(config.model.num_layers,
                                                                                 config.model.softmax_shards):
        raise UserError(f"config key parallel.placement=colocated needs parallel.stages={config.parallel.stages} "
                        f"<= model.num_layers and model.softmax_shards (each stage holds a layer and a shard)")
    bounds = config.data.bucket_boundaries
    if not bounds or any(b <= 0 for b in bounds) or sorted(set(bounds)) != bounds:
        raise UserError(f"config key data.bucket_boundaries must be increasing positive integers, got {bounds}")
    for index, corpus in enumerate(config.data.corpora):
        key = f"data.corpora[{index}]"
        if bool(corpus.splits) == bool(corpus.file):
            raise UserError(f"config key {key}: give either `splits` or `file` with `split_fractions`")
        if corpus.file:
            fractions = corpus.split_fractions
            if not fractions or any(f <= 0 for f in fractions.values()):
                raise UserError(f"config key {key}.split_fractions must be positive fractions, got {fractions}")
            if abs(sum(fractions.values()) - 1.0) > 1e-9:
                raise UserError(f"config key {key}.split_fractions must sum to 1, got {sum(fractions.values())}")


def config_hash(section: Any, exclude: tuple[str, ...] = ()) -> str:
    """Stable sha256 of a config section, ignoring where things live on disk."""
    values = {k: v for k, v in dataclasses.asdict(section).items() if k not in exclude}
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each dataclass field, read from source, for `--help`."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for node, following in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)):
            docs[node.target.id] = following.value.value.strip()
    return docs


def describe_options() -> str:
    """Every `--section.key` with its default and docstring, for the CLI's help text."""
    lines = []
    defaults = Config()
    for section in dataclasses.fields(Config):
        section_value = getattr(defaults, section.name)
        docs = field_docs(type(section_value))
        for item in dataclasses.fields(section_value):
            default = getattr(section_value, item.name)
            listed_sections = isinstance(default, list) and default and dataclasses.is_dataclass(default[0])
            shown = "[...]" if listed_sections else default
            lines.append(f"  --{section.name}.{item.name}={shown}\n      {docs.get(item.name, '')}")
    return "\n".join(lines)


@dataclass(frozen=True)
class _Override:
    """A command-line value: YAML-parsed, but kept as text for string-typed keys (`--x.name=123`)."""

    text: str
    parsed: Any


def _apply_override(raw: dict[str, Any], override: str) -> None:
    text = override[2:] if override.startswith("--") else override
    if "=" not in text:
        raise UserError(f"override {override!r} must look like --section.key=value")
    key, value = text.split("=", 1)
    parts = key.split(".")
    if len(parts) < 2 or not all(parts):
        raise UserError(f"override {override!r}: key must be section.key, e.g. --train.max_steps=10")
    try:
        parsed = yaml.safe_load(value) if value != "" else ""
    except yaml.YAMLError:
        parsed = value
    node = raw
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UserError(f"override {override!r}: {'.'.join(parts[:depth + 1])} is not a section")
        node = child
    node[parts[-1]] = _Override(value, parsed)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check `value` against the type `hint`, recursively; errors name `key`."""
    if isinstance(value, _Override):
        value = value.text if _accepts_str(hint) and not _is_null(value.parsed) else value.parsed
    if dataclasses.is_dataclass(hint):
        return _coerce_dataclass(value, hint, key)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        for option in options:
            try:
                return _coerce(value, option, key)
            except UserError:
                continue
        raise _type_error(key, hint, value)
    if origin is Literal:
        if value not in args:
            raise UserError(f"config key {key} must be one of {list(args)}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise _type_error(key, hint, value)
        return [_coerce(item, args[0], f"{key}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise _type_error(key, hint, value)
        return {str(k): _coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            raise _type_error(key, hint, value)
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _type_error(key, hint, value)
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _type_error(key, hint, value)
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise _type_error(key, hint, value)
        return value
    raise TypeError(f"config key {key}: unsupported type {hint}")


def _coerce_dataclass(value: Any, cls: type, key: str) -> Any:
    where = key or "config"
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise UserError(f"config key {where} must be a mapping, got {type(value).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in value if k not in names]
    if unknown:
        full = f"{key}.{unknown[0]}" if key else str(unknown[0])
        raise UserError(f"unknown config key {full} (known in {where}: {', '.join(names)})")
    kwargs = {name: _coerce(value[name], hints[name], f"{key}.{name}" if key else name)
              for name in names if name in value}
    return cls(**kwargs)


def _accepts_str(hint: Any) -> bool:
    return hint is str or str in typing.get_args(hint)


def _is_null(parsed: Any) -> bool:
    return parsed is None


def _type_error(key: str, hint: Any, value: Any) -> UserError:
    expected = getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
    return UserError(f"config key {key} must be {expected}, got {type(value).__name__} {value!r}")
