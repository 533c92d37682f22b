"""Reading what every task's readers share: UTF-8 text, JSON and JSON Lines items, and hub dataset splits.

Errors are one-line :class:`~addrop_cli.errors.UserError` messages naming the file (or dataset) and line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from addrop_cli.errors import UserError


def read_text(path: Path) -> str:
    """Return the file's text with any UTF-8 BOM removed (MRPC's header starts with one)."""
    try:
        # Bytes, not text mode: universal newlines would split a row at a stray "\r" inside a field.
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise UserError(f"{path} is not UTF-8 text: byte {err.start}: {err.reason}") from err
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror or err}") from err


def json_items(path: Path, text: str) -> list[tuple[int, Any]]:
    """Parse a JSON list of objects, or {"data": [...]}; items are numbered from 1."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"{path} line {err.lineno}: invalid JSON: {err.msg}") from err
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise UserError(
            f'{path}: expected a JSON list of objects or {{"data": [...]}}, got {type(data).__name__}'
        )
    return list(enumerate(data, start=1))


def jsonl_items(path: Path, text: str) -> list[tuple[int, Any]]:
    """Parse one JSON value per non-blank line; items are numbered by line."""
    items = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            items.append((number, json.loads(line)))
        except json.JSONDecodeError as err:
            raise UserError(f"{path} line {number}: invalid JSON: {err.msg}") from err
    return items


def load_hub_split(dataset: str, config: str | None, split: str, what: str, cache_dir: str | Path | None = None):
    """``datasets.load_dataset`` with one-line errors; returns the split and its name for messages.

    ``what`` names the rows in the "has no ..." error (examples, sentences, sentence pairs).
    """
    import datasets  # imported here: it is slow to import and only the hub paths need it

    source = f"dataset {dataset!r}" + (f" (config {config!r})" if config else "") + f" split {split!r}"
    try:
        loaded = datasets.load_dataset(dataset, config, split=split, cache_dir=cache_dir)
    except Exception as err:  # datasets raises many unrelated types for a bad name, config or split
        raise UserError(f"cannot load {source}: {describe(err)}") from err
    if len(loaded) == 0:
        raise UserError(f"{source} has no {what}")
    return loaded, source


def read_json_items(path: Path, what: str) -> tuple[str, list[tuple[int, Any]]]:
    """The objects of a .json (numbered by item) or .jsonl (by line) file, with the unit that numbers them."""
    text = read_text(path)
    if not text.strip():
        raise UserError(f"{path} has no {what}")
    if path.suffix.lower() == ".json":
        unit, items = "item", json_items(path, text)
    else:
        unit, items = "line", jsonl_items(path, text)
    if not items:
        raise UserError(f"{path} has no {what}")
    return unit, items

def describe(err: BaseException) -> str:
    """One line for an exception: its first line, then its cause's (datasets wraps the telling error)."""
    parts: list[str] = []
    current: BaseException | None = err
    while current is not None and len(parts) < 2:
        text = str(current).strip()
        parts.append(text.splitlines()[0] if text else type(current).__name__)
        current = current.__cause__ or current.__context__
    return ": ".join(parts)
