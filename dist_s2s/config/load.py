"""Reading a config: YAML files (with `base:`), `--section.key=value` overrides, type checks.

Unknown keys and wrong types are errors that name the full key (`data.corpora[0].splits`).
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from dist_s2s.config.schema import Config
from dist_s2s.config.validate import validate
from dist_s2s.errors import UserError


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


_YAML11_EXPONENT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


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
        if isinstance(value, str) and _YAML11_EXPONENT.fullmatch(value.strip()):
            return float(value)  # 1e-4: YAML 1.1 (PyYAML) reads an exponent without a dot as a string
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
