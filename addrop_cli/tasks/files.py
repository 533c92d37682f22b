"""Reading what every task's readers share: UTF-8 text, JSON and JSON Lines items, and hub dataset splits.

Errors are one-line :class:`~addrop_cli.errors.UserError` messages naming the file (or dataset) and line.
"""

from __future__ import annotations

import functools
import json
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from addrop_cli.errors import UserError, first_line

HUB_PROBE_SECONDS = 3.0  # without it, an unreachable hub costs ~45 s of library retries before any error


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
    instead = "give local files with --train-file and --validation-file (and --test-file) instead"
    local = Path(dataset).expanduser().exists()
    problem = None if local or _dataset_cached(dataset, cache_dir) else hub_unreachable()
    if problem is not None:
        raise UserError(f"cannot load {source}: the Hugging Face Hub is unreachable ({problem}); {instead}")
    try:
        loaded = datasets.load_dataset(dataset, config, split=split, cache_dir=cache_dir)
    except Exception as err:  # datasets raises many unrelated types for a bad name, config or split
        raise UserError(f"cannot load {source}: {describe(err)}; {instead}") from err
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
        parts.append(first_line(current))
        current = current.__cause__ or current.__context__
    return ": ".join(parts)


def _dataset_cached(dataset: str, cache_dir: str | Path | None) -> bool:
    """Whether ``datasets`` has a cached copy to fall back on (then it is left to find it, as before)."""
    import datasets
    from huggingface_hub import constants

    folder = dataset.replace("/", "___")
    return (Path(cache_dir or datasets.config.HF_DATASETS_CACHE) / folder).exists() or \
        (Path(constants.HF_HUB_CACHE) / f"datasets--{dataset.replace('/', '--')}").exists()


PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


@functools.cache
def hub_unreachable() -> str | None:
    """Why the Hugging Face Hub cannot be reached (one quick connection, once per process), or None.

    None too in offline mode (``HF_HUB_OFFLINE``), where the libraries fail fast on their own, and behind a
    proxy, which a direct connection cannot judge.
    """
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or any(os.environ.get(name) for name in PROXY_VARIABLES):
        return None
    endpoint = urlparse(constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=HUB_PROBE_SECONDS).close()
    except OSError as error:
        return f"{endpoint.hostname}:{port}: {error.strerror or error}"
    return None
