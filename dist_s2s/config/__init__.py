"""Typed configuration: dataclass sections, loaded from YAML, overridden by `--section.key=value`.

`schema` holds the sections and their defaults (the paper's, with the section they come from),
`load` reads YAML and overrides and type-checks them, `validate` checks what types cannot,
`describe` turns the fields' docstrings into the command line's help.
"""

from dist_s2s.config.describe import describe_options, field_docs
from dist_s2s.config.load import config_from_dict, load_config
from dist_s2s.config.schema import (
    Config,
    CorpusConfig,
    DataConfig,
    EvalConfig,
    ModelConfig,
    OptimConfig,
    ParallelConfig,
    RayConfig,
    ServeConfig,
    TrackingConfig,
    TrainConfig,
    config_hash,
)
from dist_s2s.config.validate import validate

__all__ = [
    "Config", "CorpusConfig", "DataConfig", "EvalConfig", "ModelConfig", "OptimConfig", "ParallelConfig",
    "RayConfig", "ServeConfig", "TrackingConfig", "TrainConfig", "config_from_dict", "config_hash", "describe_options",
    "field_docs", "load_config", "validate",
]
