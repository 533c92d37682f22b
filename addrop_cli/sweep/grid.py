"""The sweep's command-line grammar: value lists and ranges for --p/--q, seeds, and --grid KEY=V1,V2 over
any recipe key; and how values are shown in trial names and tables."""

from __future__ import annotations

import dataclasses
import difflib
from decimal import Decimal, InvalidOperation
from typing import Any

import yaml

from addrop_cli.core.methods.registry import SHARED_SECTION, key_owner, method_names
from addrop_cli.errors import UserError
from addrop_cli.recipe import plain_keys, recipe_sections

P_KEY, Q_KEY, SEED_KEY, METHOD_KEY = "addrop.p", "addrop.q", "train.seed", "addrop.method"
DEFAULT_STEP = Decimal("0.1")
# Keys a sweep sets itself, or that make no sense to vary.
RESERVED_KEYS = {P_KEY: "--p", Q_KEY: "--q", SEED_KEY: "--seeds", "train.output_dir": "--output-dir",
                 "addrop.enabled": "--baseline", METHOD_KEY: "--method"}

# ------------------------------------------------------------------------------------------- parsing


def _decimal(text: str, option: str, spec: str) -> Decimal:
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise UserError(f"{option} {spec!r} is invalid: {text.strip()!r} is not a number "
                        "(use a range 0.1:0.9, a range with step 0.1:0.9:0.2, or a list 0.1,0.3,0.5)") from None
    if not value.is_finite():
        raise UserError(f"{option} {spec!r} is invalid: {text.strip()!r} is not a finite number")
    return value


def parse_values(spec: str, option: str) -> list[float]:
    """``"0.1:0.9"`` (inclusive, step 0.1), ``"0.1:0.9:0.2"`` or ``"0.1,0.3,0.5"`` -> floats.

    Ranges are stepped in decimal arithmetic, so ``0.1:0.9`` is exactly the nine values 0.1, 0.2, ..., 0.9
    (float steps drift: 0.1 + 0.2 != 0.3).
    """
    if ":" in spec:
        parts = spec.split(":")
        if len(parts) not in (2, 3):
            raise UserError(f"{option} {spec!r} is invalid: a range is START:STOP or START:STOP:STEP")
        start, stop = _decimal(parts[0], option, spec), _decimal(parts[1], option, spec)
        step = _decimal(parts[2], option, spec) if len(parts) == 3 else DEFAULT_STEP
        if step <= 0 or stop < start:
            raise UserError(f"{option} {spec!r} is invalid: a range needs START <= STOP and a positive STEP")
        count = int((stop - start) / step) + 1
        return [float(start + i * step) for i in range(count)]
    values = [float(_decimal(part, option, spec)) for part in spec.split(",") if part.strip()]
    if not values:
        raise UserError(f"{option} {spec!r} is invalid: give at least one value")
    if len(set(values)) != len(values):
        raise UserError(f"{option} {spec!r} is invalid: a value is repeated")
    return values


def parse_methods(spec: str) -> list[str]:
    """``"addrop,rdrop"`` -> the methods, each once (checked against the method table when recipes are built)."""
    methods = [part.strip() for part in spec.split(",") if part.strip()]
    if not methods or len(set(methods)) != len(methods):
        raise UserError(f"--method {spec!r} is invalid: give one or more different methods, e.g. "
                        f"{','.join(method_names())}")
    return methods


def regularizer_key(key: str) -> bool:
    """Whether a recipe key belongs to the regularized epochs (the shared ``addrop.*`` keys and every method's
    own): plain fine-tuning trials leave it out."""
    return key.partition(".")[0] == SHARED_SECTION or key_owner(key) is not None


def applies_to(key: str, method: str) -> bool:
    """Whether recipe ``key`` shapes a run whose ``addrop.method`` is ``method``: a method's own settings only
    with it, the keys every method shares always."""
    owner = key_owner(key)
    return owner is None or owner.name == method


def parse_seeds(spec: str) -> list[int]:
    """``"5"`` -> seeds 1..5; ``"1,2,3"`` -> those seeds."""
    parts = [part.strip() for part in spec.split(",") if part.strip()]
    if not parts or not all(part.isdigit() for part in parts):
        raise UserError(f"--seeds {spec!r} is invalid: give a count (5 means seeds 1 to 5) or a list like 1,2,3")
    if len(parts) == 1:
        count = int(parts[0])
        if count < 1:
            raise UserError(f"--seeds {spec!r} is invalid: the count must be at least 1")
        return list(range(1, count + 1))
    seeds = [int(part) for part in parts]
    if len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds {spec!r} is invalid: a seed is repeated")
    return seeds


def recipe_keys() -> list[str]:
    """Every dotted recipe key: ``task``, ``model``, ``data.max_length``, ``train.lr``, ``addrop.p``, ..."""
    keys = plain_keys()
    for name, settings in recipe_sections().items():
        keys.extend(f"{name}.{inner.name}" for inner in dataclasses.fields(settings))
    return keys


def resolve_key(name: str) -> str:
    """A dotted recipe key from itself or its last part (``lr`` -> ``train.lr``, ``k_shot`` -> ``data.k_shot``).
    A last part that several sections share means AD-DROP's key when it has one (``layers`` -> ``addrop.layers``);
    otherwise the full key is needed (``alpha``: ``rdrop.alpha`` or ``lora.alpha``)."""
    keys = recipe_keys()
    matches = [name] if name in keys else [key for key in keys if key.rsplit(".", 1)[-1] == name]
    if len(matches) > 1:
        own = [key for key in matches if key.startswith("addrop.")]
        if not own:
            raise UserError(f"--grid: '{name}' is ambiguous; give the full key: {' or '.join(matches)}")
        matches = own
    if len(matches) != 1:
        close = difflib.get_close_matches(name, keys + [key.rsplit(".", 1)[-1] for key in keys], n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise UserError(f"--grid: unknown recipe key '{name}'{hint} (use a dotted key such as train.lr, "
                        "addrop.layers or data.k_shot, or its last part)")
    key = matches[0]
    if key in RESERVED_KEYS:
        raise UserError(f"--grid {name}: the sweep sets {key} itself; use {RESERVED_KEYS[key]} instead")
    return key


def _split_values(text: str) -> list[str]:
    """Split on commas outside brackets, so ``first,all,[0,3]`` is three values."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += (char in "[{") - (char in "]}")
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [part.strip() for part in parts]


def parse_grid(assignment: str) -> tuple[str, list[Any]]:
    """``"lr=1e-5,2e-5"`` -> ``("train.lr", ["1e-5", "2e-5"])``: values read as YAML, typed when a recipe is built."""
    if "=" not in assignment:
        raise UserError(f"--grid {assignment!r} is invalid: use KEY=V1,V2,... e.g. --grid train.lr=1e-5,2e-5")
    name, raw = (part.strip() for part in assignment.split("=", 1))
    key = resolve_key(name)
    values = [yaml.safe_load(part) if part else None for part in _split_values(raw)]
    if not raw or any(value is None for value in values):
        raise UserError(f"--grid {assignment!r} is invalid: give one or more comma-separated values")
    return key, values


def get_value(values: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        values = values[part]
    return values


def format_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return "+".join(format_value(item) for item in value)
    return str(value)
