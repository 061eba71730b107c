"""YAML -> frozen dataclass trees, with `--set a.b.c=value` overrides.

Every component keeps its config dataclasses in a config module that imports no scorer, model or
stage (`filters/config.py`, `models/captioner/config.py`, `training/config.py`), and
`curation/config.py` composes them into one tree. This module only knows how to build any such
tree from plain dicts, and says which key is wrong when it can't. It lives in `manifests/`, the
floor every other package may import, so scorers and models never reach up into the pipeline.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


@dataclass(frozen=True)
class Resources:
    """How one stage's Ray Data operator is scheduled."""

    num_cpus: float = 1.0
    """CPUs reserved per task/actor (>= 0)."""
    num_gpus: float = 0.0
    """GPUs reserved per actor (>= 0; fractions share a card)."""
    concurrency: int = 0
    """Number of parallel actors/tasks; 0 = as many as the cluster's CPUs allow."""
    batch_size: int = 4
    """Rows per batch handed to the stage's __call__ (>= 1)."""

    def __post_init__(self):
        check(self.num_cpus >= 0, "num_cpus", "must be >= 0")
        check(self.num_gpus >= 0, "num_gpus", "must be >= 0")
        check(self.concurrency >= 0, "concurrency", "must be >= 0")
        check(self.batch_size >= 1, "batch_size", "must be >= 1")


class ConfigError(ValueError):
    """A config value or key is wrong; the message names the dotted key."""


class InputError(ValueError):
    """A command-line input (a folder, glob or list file) names nothing usable."""


def build(cls: type[T], data: dict[str, Any] | None, prefix: str = "") -> T:
    """Build dataclass `cls` from a (possibly partial) dict; missing keys take defaults.

    Unknown keys are an error (typos must not pass silently). Values are coerced to the
    annotated type where that is lossless (int -> float, list -> tuple, ...).
    """
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or '<root>'}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = prefix or "<root>"
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known keys: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, _join(prefix, name))
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(_prefixed(str(exc), prefix)) from exc


def _prefixed(message: str, prefix: str) -> str:
    if not prefix or message.startswith(prefix):
        return message
    return f"{prefix}.{message}"


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{key}: must be one of {list(args)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return build(tp, value, key)
    if origin in (tuple, list):
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        item_tp = args[0] if args else Any
        items = [_coerce(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        key_tp, val_tp = args if args else (Any, Any)
        return {_coerce(key_tp, k, key): _coerce(val_tp, v, _join(key, str(k))) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (['a', 'b', 'c'], value parsed as a YAML scalar/list)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. split.min_clip_s=2.0")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set {text!r}: empty key")
    return parts, yaml.safe_load(raw) if raw.strip() else ""


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of `data` with each `a.b.c=value` applied (creating mappings as needed)."""
    out = _deepcopy(data)
    for text in overrides:
        parts, value = parse_override(text)
        node = out
        for i, part in enumerate(parts[:-1]):
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {text!r}: {'.'.join(parts[: i + 1])} is not a mapping")
            node = nxt
        node[parts[-1]] = value
    return out


def _deepcopy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deepcopy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deepcopy(v) for v in data]
    return data


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    with path.open() as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def to_dict(cfg: Any) -> Any:
    """Dataclass tree -> plain dict (tuples become lists), e.g. for storing in checkpoints."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    return cfg


def check(cond: bool, key: str, message: str) -> None:
    """Raise ConfigError('key: message') unless cond; used in __post_init__ validators."""
    if not cond:
        raise ConfigError(f"{key} {message}")
