"""Typed, validated configuration. A recipe YAML mirrors :class:`Recipe` field for field.

Precedence when resolving a run: recipe file < command-line flags < ``--set key=value`` overrides.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from addrop_cli.attention import ATTENTION_KINDS, ENCODER
from addrop_cli.errors import UserError

ATTRIBUTIONS = ("ga", "iga", "aa", "rd")
LABEL_MODES = ("pseudo", "gold")
STRATEGIES = ("high", "low", "random")
MIXED_PRECISION = ("no", "fp16", "bf16")


def _require(condition: bool, key: str, value: Any, valid: str) -> None:
    if not condition:
        raise UserError(f"{key}={value!r} is invalid: {valid}")


@dataclass
class ADDropConfig:
    """AD-DROP settings (paper Section 2.3-2.4, Table 2)."""

    enabled: bool = True
    p: float = 0.3
    q: float = 0.3
    layers: str | list[int] = "first"
    attribution: str = "ga"
    labels: str = "pseudo"
    cross_tuning: bool = True
    iga_steps: int = 20
    attention: list[str] = field(default_factory=lambda: [ENCODER])
    strategy: str = "high"
    unmasked_weight: float = 0.0

    def __post_init__(self) -> None:
        _require(0 < self.p < 1, "addrop.p", self.p, "p is the candidate share, strictly between 0 and 1")
        _require(0 <= self.q <= 1, "addrop.q", self.q, "q is a dropout rate, between 0 and 1")
        _require(self.attribution in ATTRIBUTIONS, "addrop.attribution", self.attribution,
                 f"choose one of {', '.join(ATTRIBUTIONS)}")
        _require(self.labels in LABEL_MODES, "addrop.labels", self.labels, "choose pseudo or gold")
        _require(self.strategy in STRATEGIES, "addrop.strategy", self.strategy,
                 f"choose one of {', '.join(STRATEGIES)}")
        _require(0 <= self.unmasked_weight <= 1, "addrop.unmasked_weight", self.unmasked_weight,
                 "a weight in [0, 1] (0 is the paper's AD-DROP)")
        _require(self.iga_steps >= 1, "addrop.iga_steps", self.iga_steps, "use a positive number of steps")
        if isinstance(self.layers, str) and self.layers not in ("first", "all"):
            parts = [part.strip() for part in self.layers.split(",")]
            if all(part.isdigit() for part in parts):
                self.layers = [int(part) for part in parts]  # "0,3,5" from the command line
        if isinstance(self.layers, str):
            _require(self.layers in ("first", "all"), "addrop.layers", self.layers,
                     "use first, all, or a list of layer indices such as [0, 3, 5]")
        else:
            _require(len(self.layers) > 0 and all(isinstance(i, int) and i >= 0 for i in self.layers),
                     "addrop.layers", self.layers, "layer indices are non-negative integers, e.g. [0, 3, 5]")
        _require(len(self.attention) > 0 and set(self.attention) <= set(ATTENTION_KINDS), "addrop.attention",
                 self.attention, f"a list drawn from {', '.join(ATTENTION_KINDS)}")


@dataclass
class DataConfig:
    """Where the examples come from and how they are tokenized."""

    dataset: str | None = None
    dataset_config: str | None = None
    train_file: str | None = None
    validation_file: str | None = None
    test_file: str | None = None
    text_columns: list[str] | None = None
    label_column: str | None = None
    max_length: int = 128
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    k_shot: int | None = None
    train_fraction: float | None = None
    holdout_fraction: float | None = None
    group_by_length: bool = True
    label_all_tokens: bool = False
    source_lang: str | None = None
    target_lang: str | None = None
    max_target_length: int = 128
    source_prefix: str = ""

    def __post_init__(self) -> None:
        _require(self.max_length >= 8, "data.max_length", self.max_length, "use at least 8 tokens")
        for key in ("max_train_samples", "max_eval_samples", "k_shot"):
            value = getattr(self, key)
            _require(value is None or value >= 1, f"data.{key}", value, "use a positive number or leave it unset")
        _require(self.train_fraction is None or 0 < self.train_fraction <= 1, "data.train_fraction",
                 self.train_fraction, "use a fraction in (0, 1] or leave it unset")
        _require(self.k_shot is None or self.train_fraction is None, "data.k_shot", self.k_shot,
                 "give either data.k_shot or data.train_fraction, not both")
        _require(self.holdout_fraction is None or 0 < self.holdout_fraction < 1, "data.holdout_fraction",
                 self.holdout_fraction, "use a fraction in (0, 1) or leave it unset")
        _require(self.holdout_fraction is None or self.validation_file is None, "data.holdout_fraction",
                 self.holdout_fraction, "the held-out share replaces the validation data: drop "
                 "data.validation_file (give the dev file as --test-file to score it once)")


@dataclass
class TrainConfig:
    """Optimisation, schedule, selection and output (HF Trainer's defaults where the paper is silent)."""

    output_dir: str = "runs/addrop"
    seed: int = 42
    epochs: int = 3
    lr: float = 2e-5
    batch_size: int = 16
    eval_batch_size: int = 64
    weight_decay: float = 0.01
    adam_epsilon: float = 1e-6
    warmup_ratio: float = 0.0
    gradient_accumulation_steps: int = 1
    max_grad_norm: float = 1.0
    mixed_precision: str = "no"
    metric: str | None = None
    patience: int | None = None
    log_every: int = 10
    save_steps: int | None = None
    save_total_limit: int | None = 2
    num_beams: int = 1

    def __post_init__(self) -> None:
        for key in ("epochs", "batch_size", "eval_batch_size", "gradient_accumulation_steps", "log_every"):
            value = getattr(self, key)
            _require(value >= 1, f"train.{key}", value, "use a positive integer")
        _require(self.lr > 0, "train.lr", self.lr, "the learning rate must be positive")
        _require(0 <= self.warmup_ratio < 1, "train.warmup_ratio", self.warmup_ratio, "use a value in [0, 1)")
        _require(self.weight_decay >= 0, "train.weight_decay", self.weight_decay, "use a value >= 0")
        _require(self.max_grad_norm >= 0, "train.max_grad_norm", self.max_grad_norm, "use a value >= 0")
        _require(self.mixed_precision in MIXED_PRECISION, "train.mixed_precision", self.mixed_precision,
                 f"choose one of {', '.join(MIXED_PRECISION)}")
        _require(self.patience is None or self.patience >= 1, "train.patience", self.patience,
                 "use a positive number of epochs or leave it unset")
        for key in ("save_steps", "save_total_limit"):
            value = getattr(self, key)
            _require(value is None or value >= 1, f"train.{key}", value, "use a positive integer or leave it unset")


@dataclass
class Recipe:
    """A whole run: task, model, data, training and AD-DROP settings."""

    task: str = "sst2"
    model: str = "minilm"
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    addrop: ADDropConfig = field(default_factory=ADDropConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------- building from dicts


def _field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _unknown_key(key: str, valid: list[str]) -> UserError:
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], valid, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return UserError(f"unknown recipe key '{key}'{hint} (valid here: {', '.join(valid)})")


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Convert a YAML/CLI value to the annotated type, or raise a UserError naming the key."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, option, key)
            except UserError as error:
                errors.append(str(error))
        raise UserError(errors[-1])
    if origin is list:
        if isinstance(value, str) and "," in value:
            value = [v.strip() for v in value.split(",")]
        if not isinstance(value, list):
            raise UserError(f"{key}={value!r} is invalid: expected a list")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no"):
            return value.lower() in ("true", "yes")
        raise UserError(f"{key}={value!r} is invalid: expected true or false")
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise UserError(f"{key}={value!r} is invalid: expected an integer")
        try:
            return int(value)
        except ValueError:
            raise UserError(f"{key}={value!r} is invalid: expected an integer") from None
    if annotation is float:
        if isinstance(value, bool):
            raise UserError(f"{key}={value!r} is invalid: expected a number")
        try:
            return float(value)  # YAML reads 1e-5 (no dot) as a string
        except (TypeError, ValueError):
            raise UserError(f"{key}={value!r} is invalid: expected a number") from None
    if annotation is str:
        if isinstance(value, (dict, list)) or value is None:
            raise UserError(f"{key}={value!r} is invalid: expected a string")
        return str(value)
    raise TypeError(f"unsupported annotation {annotation!r} for {key}")


def build(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a (possibly nested) dict, rejecting unknown keys."""
    if not isinstance(values, dict):
        raise UserError(f"recipe section '{prefix.rstrip('.') or 'top level'}' must be a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = _field_names(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            raise _unknown_key(prefix + str(key), names)
        annotation = hints[key]
        if dataclasses.is_dataclass(annotation):
            kwargs[key] = build(annotation, value or {}, f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(value, annotation, prefix + key)
    return cls(**kwargs)


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Deep merge of nested dicts; ``update`` wins."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(assignment: str) -> dict[str, Any]:
    """``"train.lr=2e-5"`` -> ``{"train": {"lr": 2e-5}}``; the value is read as YAML."""
    if "=" not in assignment:
        raise UserError(f"--set {assignment!r} is invalid: use KEY=VALUE with a dotted key, e.g. train.lr=2e-5")
    key, raw = assignment.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise UserError(f"--set {assignment!r} is invalid: the key must be dotted names, e.g. addrop.p=0.3")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return nest(key, value)


def nest(key: str, value: Any) -> dict[str, Any]:
    """``("train.lr", 2e-5)`` -> ``{"train": {"lr": 2e-5}}``."""
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def load_yaml(path: Path) -> dict[str, Any]:
    """Read a recipe file safely (``yaml.safe_load``); syntax errors name the file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise UserError(f"cannot read recipe {path}: {error.strerror}") from None
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise UserError(f"recipe {path}{where}: YAML syntax error: {problem}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise UserError(f"recipe {path} must be a mapping of keys (task, model, data, train, addrop)")
    return values


def dump_yaml(values: dict[str, Any], header: str = "") -> str:
    return header + yaml.safe_dump(values, sort_keys=False, allow_unicode=True)
