"""Checks across a config's fields that their types alone cannot express."""

from __future__ import annotations

from dist_s2s.config.schema import Config
from dist_s2s.errors import UserError


def validate(config: Config) -> None:
    """Checks across fields that types alone cannot express."""
    _check_ranges(config)
    _check_parallel(config)
    _check_data(config)


def _check_ranges(config: Config) -> None:
    """Sizes, rates and ratios positive; seeds, lengths and decay points not negative; dropout a rate."""
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
        "parallel.start_timeout_s": config.parallel.start_timeout_s,
        "train.batch_size": config.train.batch_size,
        "train.log_every": config.train.log_every,
        "train.valid_every": config.train.valid_every,
        "train.checkpoint_every": config.train.checkpoint_every,
        "train.keep_checkpoints": config.train.keep_checkpoints,
        "train.best_beam": config.train.best_beam,
        "eval.beam_size": config.eval.beam_size,
        "eval.max_length_ratio": config.eval.max_length_ratio,
        "eval.batch_size": config.eval.batch_size,
        "serve.port": config.serve.port,
        "serve.max_sentences": config.serve.max_sentences,
        "serve.max_chars": config.serve.max_chars,
        "serve.max_queued": config.serve.max_queued,
        "serve.max_batch": config.serve.max_batch,
        "serve.max_beam": config.serve.max_beam,
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
                       "eval.length_penalty": config.eval.length_penalty,
                       "train.early_stop_patience": config.train.early_stop_patience,
                       "serve.batch_wait_ms": config.serve.batch_wait_ms,
                       "serve.kernel_cache": config.serve.kernel_cache}.items():
        if value < 0:
            raise UserError(f"config key {key} must be >= 0, got {value}")
    if config.serve.batch_max_wait_ms < config.serve.batch_wait_ms:
        raise UserError(f"config key serve.batch_max_wait_ms must be >= serve.batch_wait_ms "
                        f"({config.serve.batch_wait_ms}), got {config.serve.batch_max_wait_ms}")
    for key in ("adam_beta1", "adam_beta2"):
        if not 0 <= getattr(config.optim, key) < 1:
            raise UserError(f"config key optim.{key} must be in [0, 1), got {getattr(config.optim, key)}")
    if config.optim.adam_eps <= 0:
        raise UserError(f"config key optim.adam_eps must be positive, got {config.optim.adam_eps}")
    if not 0 <= config.model.dropout < 1:
        raise UserError(f"config key model.dropout must be in [0, 1), got {config.model.dropout}")
    if config.serve.port > 65535:
        raise UserError(f"config key serve.port must be a TCP port (1-65535), got {config.serve.port}")
    if config.train.max_steps is not None and config.train.max_steps <= 0:
        raise UserError(f"config key train.max_steps must be positive, got {config.train.max_steps}")


def _check_parallel(config: Config) -> None:
    """Stages that can each hold a unit, a batch that splits into the micro-batches and replicas asked for."""
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


def _check_data(config: Config) -> None:
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
