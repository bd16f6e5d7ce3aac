"""The config's schema: one typed dataclass a section, each field with its default and why.

Every number that comes from the paper is a default here, with the section of
Sutskever, Vinyals & Le (2014) it comes from; `configs/*.yaml` override them by size.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any, Literal


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
    vocabulary: Literal["words", "sentencepiece"] = "words"
    """`words`: the src/tgt_vocab_size most frequent words, the rest <unk> (paper §3.1); `sentencepiece`: that
    many subword pieces a side, learnt on the training split (Sennrich et al. 2016; Kudo & Richardson 2018)."""
    sentencepiece_type: Literal["unigram", "bpe"] = "unigram"
    """The SentencePiece model with data.vocabulary=sentencepiece: a unigram language model or BPE merges."""


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
    attention: Literal["none", "luong"] = "none"
    """`luong`: global attention with the general score on the top decoder layer over the top encoder
    layer's outputs (Luong et al. 2015), without input feeding; `none` is the paper's model."""


@dataclass
class OptimConfig:
    optimizer: Literal["sgd", "adam"] = "sgd"
    """`sgd`: plain SGD, no momentum (paper §3.4); `adam`: Adam (Kingma & Ba 2015) on the same clipped
    gradient and rate schedule, its moments checkpointed with the weights."""
    lr: float = 0.7
    """Initial learning rate (paper §3.4: 0.7 for SGD; Adam wants about 0.001)."""
    max_grad_norm: float = 5.0
    """Rescale the gradient to this L2 norm when larger (paper §3.4)."""
    decay_start_epoch: float = 5.0
    """Epochs at the initial rate before halving starts (paper §3.4: 5)."""
    halve_lr_every: float = 0.5
    """Halve the rate every this many epochs after decay_start_epoch (paper §3.4: 0.5)."""
    epochs: float = 7.5
    """Training length in epochs (paper §3.4: 7.5)."""
    adam_beta1: float = 0.9
    """Adam: decay of the gradient's running mean."""
    adam_beta2: float = 0.999
    """Adam: decay of the squared gradient's running mean."""
    adam_eps: float = 1e-8
    """Adam: added to the root of the squared-gradient mean."""


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
    """Wavefront: time steps of the source and of the target in one chunk (the unit a stage hands on; narrower
    chunks shorten the wavefront's fill and drain, wider ones cost less per message: docs/benchmarks.md)."""
    placement: Literal["auto", "chain", "colocated"] = "auto"
    """Wavefront: `chain` (LSTM layers, then softmax shards, in order: with layers + shards stages the
    paper's layout), `colocated` (every stage holds layers and a share of the vocabulary), or `auto`:
    colocated when every stage can hold a layer and a shard, else chain."""
    timeout_s: int = 300
    """Seconds a rank waits for the others during training before failing: a dead rank ends the job, never
    hangs it."""
    start_timeout_s: int = 600
    """Seconds the ranks may take to meet and set up before the first step (launchers on several nodes
    starting apart, every rank loading its weights, rank 0 starting its MLflow run); parallel.timeout_s
    bounds every wait from the first step on."""


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
    keep_best: bool = False
    """Also keep the checkpoint with the best validation measure (`best_metric`, scored at every checkpoint),
    whatever its age: `--checkpoint best` names it."""
    best_metric: Literal["ppl", "bleu"] = "ppl"
    """What `keep_best` and early stopping rank checkpoints by: validation perplexity (lower is better), or
    sacreBLEU BLEU of the validation split decoded at `best_beam` (higher is better)."""
    best_beam: int = 5
    """Beam width of the validation decoding when best_metric is bleu."""
    early_stop_patience: int = 0
    """End training once this many checkpoints in a row have not improved on the best `best_metric`
    (0: never; train.max_steps or optim.epochs end it)."""
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
    precision: Literal["fp32", "bf16"] = "fp32"
    """The beam search's weights and matrix products (the LSTM steps and the softmax product, all of its
    arithmetic but the scores): fp32 (every result bit for bit the reference search's), or bf16 (about twice as
    fast where the CPU or GPU has bf16 matrix units; for a model trained with train.precision=bf16, whose
    products were bf16 too); the log-softmax and every score stay fp32. Perplexity and rescoring stay fp32.
    docs/evaluation.md states the difference."""
    after_training: bool = False
    """When training ends, evaluate the final checkpoint on eval.split at eval.beam_size (rank 0)."""
    attention_plots: int = 0
    """With model.attention, `evaluate` and `translate` draw the attention of this many sentences (PNG,
    logged to MLflow)."""


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    """Address `serve` listens on: this machine only unless another is named (`0.0.0.0`: every interface)."""
    port: int = 8000
    """TCP port of `serve`."""
    max_sentences: int = 64
    """Sentences one request may hold (more: 413)."""
    max_chars: int = 2000
    """Characters one sentence may hold (more: 413)."""
    max_queued: int = 1024
    """Sentences waiting to be decoded across all requests (more: 503, try again later)."""
    max_batch: int = 64
    """Sentences decoded together: requests arriving together share one batched beam search up to this."""
    batch_wait_ms: float = 5.0
    """A batch closes when no request has joined it for this long (a lone request waits this once)."""
    batch_max_wait_ms: float = 50.0
    """...or this long after its first request arrived, whichever comes first."""
    max_beam: int = 12
    """Widest beam (and most n-best) a request may ask for."""
    kernel_cache: int = 128
    """oneDNN kernels (primitives) the server keeps for the batch shapes it meets (ONEDNN_PRIMITIVE_CACHE_CAPACITY,
    unless that is set; oneDNN's own default is 1024): a server meets far more shapes than one `translate`, and
    each kept kernel holds memory, so at 1024 the server grows for thousands of requests. 0: none kept."""


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
    serve: ServeConfig = field(default_factory=ServeConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def config_hash(section: Any, exclude: tuple[str, ...] = ()) -> str:
    """Stable sha256 of a config section, ignoring where things live on disk."""
    values = {k: v for k, v in dataclasses.asdict(section).items() if k not in exclude}
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()
