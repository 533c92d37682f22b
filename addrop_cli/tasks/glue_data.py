"""Reading GLUE-style sentence(-pair) data (TSV, CSV, JSON, JSON Lines, hub datasets) and tokenizing it.

Files are read strictly: a malformed row, a missing column or an unknown label stops with a `UserError`
that names the file and line, rather than being skipped silently.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase

from addrop_cli.errors import UserError
from addrop_cli.tasks.files import json_items, jsonl_items, load_hub_split, read_text
from addrop_cli.tasks.registry import TaskSpec

SUPPORTED_SUFFIXES = (".tsv", ".csv", ".json", ".jsonl")

# How many examples go to the tokenizer at once: fast tokenizers parallelise within a call, and chunks
# bound the memory held by intermediate encodings on large training sets (MNLI, QQP).
_ENCODE_CHUNK = 4096


@dataclass
class Example:
    """One input: a sentence or sentence pair, with a class id or float target (None when unlabelled)."""

    text_a: str
    text_b: str | None
    label: int | float | None


@dataclass
class _Table:
    """Rows read from one source, before columns are picked and labels parsed."""

    source: str  # the file, or "dataset 'x' split 'y'", for messages
    unit: str  # what a row number counts: "line", "item" or "row"
    columns: list[str]
    rows: list[tuple[int, Mapping[str, Any]]]  # (row number, values by column)

    def where(self, number: int) -> str:
        """Name a row in messages, e.g. "MRPC/train.tsv line 17"."""
        return f"{self.source} {self.unit} {number}"


# ---------------------------------------------------------------------------------------------- files


def read_examples(
    path: str | Path,
    task: TaskSpec,
    *,
    text_columns: Sequence[str] | None = None,
    label_column: str | None = None,
    require_labels: bool = True,
) -> list[Example]:
    """Read the examples of `task` from a .tsv, .csv, .json or .jsonl file.

    TSV is split on tabs with no quote handling (GLUE files hold unbalanced quotes); CSV uses normal CSV
    quoting. JSON is a list of objects or {"data": [...]}; JSON Lines has one object per line. Columns
    come from the task's candidates unless `text_columns` / `label_column` name them. Without
    `require_labels`, a file with no label column (a test split) gives examples whose label is None.
    """
    path = Path(path)
    _check_path(path)
    text = read_text(path)
    if not text.strip():
        raise UserError(f"{path} has no examples")
    expected = _expected_columns(task, text_columns, label_column)
    suffix = path.suffix.lower()
    if suffix == ".tsv":
        table = _delimited_table(path, _tsv_rows(text), "tab-separated", task, expected)
    elif suffix == ".csv":
        table = _delimited_table(path, _csv_rows(path, text), "comma-separated", task, expected)
    elif suffix == ".json":
        table = _object_table(path, "item", json_items(path, text))
    else:
        table = _object_table(path, "line", jsonl_items(path, text))
    return _to_examples(table, task, text_columns, label_column, require_labels)


def _check_path(path: Path) -> None:
    """Fail early, naming the file, when it is missing, a directory or of a type we cannot read."""
    if not path.exists():
        raise UserError(f"{path} does not exist")
    if path.is_dir():
        raise UserError(f"{path} is a directory; expected a data file ({', '.join(SUPPORTED_SUFFIXES)})")
    if path.suffix.lower() not in SUPPORTED_SUFFIXES:
        raise UserError(
            f"{path}: unsupported file type {path.suffix or '(no suffix)'!r}; "
            f"valid: {', '.join(SUPPORTED_SUFFIXES)}"
        )


def _expected_columns(
    task: TaskSpec, text_columns: Sequence[str] | None, label_column: str | None
) -> set[str]:
    """Column names whose presence in a first line marks it as a header."""
    texts = set(text_columns) if text_columns is not None else {c for f in task.text_columns for c in f}
    labels = {label_column} if label_column is not None else set(task.label_columns)
    return texts | labels


def _tsv_rows(text: str) -> list[tuple[int, list[str]]]:
    """Split non-blank lines on tabs, quoting off; line numbers are 1-based."""
    return [
        (number, line.rstrip("\r").split("\t"))
        for number, line in enumerate(text.split("\n"), start=1)
        if line.strip()
    ]


def _csv_rows(path: Path, text: str) -> list[tuple[int, list[str]]]:
    """Parse CSV records with normal quoting; a record's number is the line where it ends."""
    reader = csv.reader(io.StringIO(text, newline=""))
    rows = []
    try:
        for fields in reader:
            if any(field.strip() for field in fields):
                rows.append((reader.line_num, fields))
    except csv.Error as err:
        raise UserError(f"{path} line {reader.line_num}: malformed CSV: {err}") from err
    return rows


def _delimited_table(
    path: Path, rows: list[tuple[int, list[str]]], separator: str, task: TaskSpec, expected: set[str]
) -> _Table:
    """Take the header from the first row (or the task's headerless layout) and check field counts."""
    first = [name.strip() for name in rows[0][1]]
    if task.headerless_columns is not None and not expected.intersection(first):
        columns, body = list(task.headerless_columns), rows
    else:
        columns, body = first, rows[1:]
    for number, fields in body:
        if len(fields) != len(columns):
            raise UserError(
                f"{path} line {number}: expected {len(columns)} {separator} fields, got {len(fields)}"
            )
    return _Table(
        str(path),
        "line",
        columns,
        [(number, dict(zip(columns, fields, strict=True))) for number, fields in body],
    )


def _object_table(path: Path, unit: str, items: list[tuple[int, Any]]) -> _Table:
    """Check every item is an object; the columns are all keys seen, in order of first appearance."""
    for number, item in items:
        if not isinstance(item, dict):
            raise UserError(f"{path} {unit} {number}: expected a JSON object, got {type(item).__name__}")
    columns = list(dict.fromkeys(key for _, item in items for key in item))
    return _Table(str(path), unit, columns, items)


# ----------------------------------------------------------------------------------------- hub datasets


def load_hub_examples(
    dataset: str,
    config: str | None,
    split: str,
    task: TaskSpec,
    *,
    text_columns: Sequence[str] | None = None,
    label_column: str | None = None,
    require_labels: bool = True,
    cache_dir: str | Path | None = None,
) -> list[Example]:
    """Read one split of a dataset with `datasets.load_dataset` (a hub name or a local dataset folder).

    Integer labels of a `ClassLabel` column are mapped through their class names, so a dataset whose
    class order differs from the task's still gets the right ids; -1 (the hub's "unlabelled") is None.
    Row numbers in messages are 0-based dataset indices.
    """
    import datasets  # imported here: it is slow to import and only this path needs it

    loaded, source = load_hub_split(dataset, config, split, "examples", cache_dir)
    text_keys, label_key = _resolve_columns(
        source, loaded.column_names, task, text_columns, label_column, require_labels
    )
    keys = [*text_keys, *([label_key] if label_key else [])]
    values = {key: list(loaded[key]) for key in keys}
    feature = loaded.features.get(label_key) if label_key else None
    if isinstance(feature, datasets.ClassLabel):
        values[label_key] = [_class_name(feature.names, raw) for raw in values[label_key]]
    rows = [
        (index, dict(zip(keys, row, strict=True)))
        for index, row in enumerate(zip(*values.values(), strict=True))
    ]
    table = _Table(source, "row", list(loaded.column_names), rows)
    return _to_examples(table, task, text_columns, label_column, require_labels)


def _class_name(names: Sequence[str], raw: Any) -> Any:
    """Turn a ClassLabel id into its name; -1 (unlabelled) into None; leave anything else to the parser."""
    if raw == -1:
        return None
    return names[raw] if isinstance(raw, int) and 0 <= raw < len(names) else raw


# ------------------------------------------------------------------------------- columns and labels


def _to_examples(
    table: _Table,
    task: TaskSpec,
    text_columns: Sequence[str] | None,
    label_column: str | None,
    require_labels: bool,
) -> list[Example]:
    """Pick the text and label columns of each row and parse its label."""
    if not table.rows:
        raise UserError(f"{table.source} has no examples")
    text_keys, label_key = _resolve_columns(
        table.source, table.columns, task, text_columns, label_column, require_labels
    )
    parse_label = _label_parser(task)
    examples = []
    for number, row in table.rows:
        texts = [_text(table, number, row, key) for key in text_keys]
        label = None
        if label_key is not None:
            raw = row.get(label_key)
            if raw is None or (isinstance(raw, str) and not raw.strip()):
                if require_labels:
                    raise UserError(f"{table.where(number)}: no label in column {label_key!r}")
            else:
                try:
                    label = parse_label(raw)
                except ValueError as err:
                    raise UserError(f"{table.where(number)}: column {label_key!r}: {err}") from None
        examples.append(Example(texts[0], texts[1] if len(texts) > 1 else None, label))
    return examples


def _resolve_columns(
    source: str,
    columns: Sequence[str],
    task: TaskSpec,
    text_columns: Sequence[str] | None,
    label_column: str | None,
    require_labels: bool,
) -> tuple[list[str], str | None]:
    """Return the text column per field and the label column (None if absent and not required)."""
    have = "; it has columns: " + ", ".join(repr(c) for c in columns)
    if text_columns is not None:
        if len(text_columns) != len(task.text_columns):
            raise UserError(
                f"task {task.name} takes {len(task.text_columns)} text column(s), "
                f"got {len(text_columns)}: {', '.join(text_columns)}"
            )
        candidates: list[tuple[str, ...]] = [(name,) for name in text_columns]
    else:
        candidates = list(task.text_columns)
    text_keys = []
    for field_number, names in enumerate(candidates, start=1):
        found = next((name for name in names if name in columns), None)
        if found is None:
            raise UserError(
                f"{source}: no column for text field {field_number} of task {task.name} "
                f"(expected {_one_of(names)}){have}"
            )
        text_keys.append(found)
    label_names = (label_column,) if label_column is not None else task.label_columns
    label_key = next((name for name in label_names if name in columns), None)
    if label_key is None and (require_labels or label_column is not None):
        raise UserError(f"{source}: no label column (expected {_one_of(label_names)}){have}")
    return text_keys, label_key


def _one_of(names: Sequence[str]) -> str:
    """Phrase candidate column names for a message."""
    quoted = ", ".join(repr(name) for name in names)
    return quoted if len(names) == 1 else f"one of {quoted}"


def _text(table: _Table, number: int, row: Mapping[str, Any], key: str) -> str:
    """Return a row's text in column `key`, which must be a string."""
    if key not in row:
        raise UserError(f"{table.where(number)}: missing {key!r}")
    value = row[key]
    if not isinstance(value, str):
        raise UserError(f"{table.where(number)}: {key!r} must be a string, got {type(value).__name__}")
    return value


def _label_parser(task: TaskSpec) -> Callable[[Any], int | float]:
    """Return a function turning a raw label into a class id or float; it raises ValueError on bad input."""
    if task.is_regression:
        return _parse_float
    names = task.label_names or ()
    mapping = {name: i for i, name in enumerate(names)} | task.label_aliases
    valid = ", ".join(mapping)

    def parse(raw: Any) -> int:
        if isinstance(raw, str):
            label = mapping.get(raw.strip())
            if label is not None:
                return label
        # JSON and hub datasets give ids as numbers; bool is an int subclass but never a label.
        elif isinstance(raw, int | float) and not isinstance(raw, bool) and raw in range(len(names)):
            return int(raw)
        raise ValueError(f"unknown label {raw!r}; valid labels: {valid}")

    return parse


def _parse_float(raw: Any) -> float:
    """Parse a regression target; it must be a finite number."""
    if isinstance(raw, bool):
        raise ValueError(f"label {raw!r} is not a number; regression targets must be numeric")
    try:
        value = float(raw.strip() if isinstance(raw, str) else raw)
    except (TypeError, ValueError):
        raise ValueError(f"label {raw!r} is not a number; regression targets must be numeric") from None
    if not math.isfinite(value):
        raise ValueError(f"label {raw!r} is not a finite number")
    return value


# ------------------------------------------------------------------------------ selection and encoding


def encode_examples(
    examples: Sequence[Example], tokenizer: PreTrainedTokenizerBase, max_length: int
) -> list[dict[str, Any]]:
    """Tokenize examples (truncated to `max_length`, unpadded) into feature dicts with a "labels" key.

    Labels are added only when every example has one; a mix of labelled and unlabelled examples is an
    error, since a batch could not hold both.
    """
    if max_length < 1:
        raise UserError(f"max_length must be a positive integer, got {max_length}")
    if not examples:
        return []
    pairs = examples[0].text_b is not None
    if any((example.text_b is not None) != pairs for example in examples):
        raise ValueError("examples mix single sentences and sentence pairs")
    unlabelled = sum(example.label is None for example in examples)
    if 0 < unlabelled < len(examples):
        raise UserError(f"{unlabelled} of {len(examples)} examples have no label; label all of them or none")
    features: list[dict[str, Any]] = []
    for start in range(0, len(examples), _ENCODE_CHUNK):
        chunk = examples[start : start + _ENCODE_CHUNK]
        text_b = [example.text_b for example in chunk] if pairs else None
        encoded = tokenizer(
            [example.text_a for example in chunk], text_b, truncation=True, max_length=max_length
        )
        keys = list(encoded.keys())
        features.extend({key: encoded[key][i] for key in keys} for i in range(len(chunk)))
    if not unlabelled:
        for feature, example in zip(features, examples, strict=True):
            feature["labels"] = example.label
    return features


class _PaddingCollator:
    """Pads features to the longest in the batch; a class rather than a closure so DataLoader workers
    can pickle it."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.pad = DataCollatorWithPadding(tokenizer, return_tensors="pt")

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = dict(self.pad(features))
        labels = batch.get("labels")
        if labels is not None:
            # Regression losses need float32 targets, cross-entropy needs int64 class ids.
            batch["labels"] = labels.to(torch.float32 if labels.is_floating_point() else torch.int64)
        return batch


def make_collator(
    tokenizer: PreTrainedTokenizerBase,
) -> Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]]:
    """Return a collate function that pads a batch dynamically and returns torch tensors."""
    return _PaddingCollator(tokenizer)


