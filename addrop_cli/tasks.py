"""Registry of the GLUE tasks AD-DROP is evaluated on, plus a builder for custom sentence(-pair) tasks.

A `TaskSpec` says where a task's text and label live (in GLUE's TSV layout and in the `nyu-mll/glue` hub
layout), how raw labels map to class ids, and which metrics the paper reports for it.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass, field

from addrop_cli.errors import UserError

CLASSIFICATION = "classification"
REGRESSION = "regression"
TASK_KINDS = (CLASSIFICATION, REGRESSION)

_DEFAULT_HUB_SPLITS = {"train": "train", "validation": "validation", "test": "test"}


@dataclass(frozen=True)
class TaskSpec:
    """Everything the data and evaluation code needs to know about one task."""

    name: str
    kind: str
    # Per text field (1 or 2), accepted column names in priority order.
    text_columns: tuple[tuple[str, ...], ...]
    label_columns: tuple[str, ...]
    # Class names in id order; None for regression.
    label_names: tuple[str, ...] | None
    # Raw label strings found in files -> class id.
    label_aliases: dict[str, int]
    metrics: tuple[str, ...]
    default_metric: str
    hub_dataset: tuple[str, str] | None = None
    hub_splits: dict[str, str] = field(default_factory=lambda: dict(_DEFAULT_HUB_SPLITS))
    # Column names for TSV/CSV files without a header line (CoLA).
    headerless_columns: tuple[str, ...] | None = None

    @property
    def is_regression(self) -> bool:
        """True for tasks with a single float target (STS-B)."""
        return self.kind == REGRESSION

    @property
    def num_labels(self) -> int:
        """Size of the model's output layer: the class count, or 1 for regression."""
        return 1 if self.label_names is None else len(self.label_names)


def _aliases(label_names: Sequence[str], **extra: int) -> dict[str, int]:
    """Map each class name and its id written as a string ("0", "1", ...) to the id, plus `extra`."""
    aliases = {name: i for i, name in enumerate(label_names)}
    aliases.update({str(i): i for i in range(len(label_names))})
    aliases.update(extra)
    return aliases


def _glue(
    name: str,
    text_columns: tuple[tuple[str, ...], ...],
    label_columns: tuple[str, ...],
    label_names: tuple[str, ...] | None,
    metrics: tuple[str, ...],
    *,
    hub_splits: dict[str, str] | None = None,
    headerless_columns: tuple[str, ...] | None = None,
    **extra_aliases: int,
) -> TaskSpec:
    """Build the spec of one GLUE task; the metric listed first is used for model selection."""
    return TaskSpec(
        name=name,
        kind=REGRESSION if label_names is None else CLASSIFICATION,
        text_columns=text_columns,
        label_columns=label_columns,
        label_names=label_names,
        label_aliases={} if label_names is None else _aliases(label_names, **extra_aliases),
        metrics=metrics,
        default_metric=metrics[0],
        hub_dataset=("nyu-mll/glue", name),
        hub_splits=dict(_DEFAULT_HUB_SPLITS) if hub_splits is None else hub_splits,
        headerless_columns=headerless_columns,
    )


_PAIR_COLUMNS = (("sentence1",), ("sentence2",))

TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        _glue("sst2", (("sentence",),), ("label",), ("negative", "positive"), ("accuracy",)),
        _glue(
            "mnli",
            # GLUE TSV names first, then the hub's premise/hypothesis.
            (("sentence1", "premise"), ("sentence2", "hypothesis")),
            ("gold_label", "label"),
            ("entailment", "neutral", "contradiction"),
            ("accuracy",),
            hub_splits={
                "train": "train",
                "validation": "validation_matched",
                "validation_matched": "validation_matched",
                "validation_mismatched": "validation_mismatched",
                "test": "test_matched",
                "test_matched": "test_matched",
                "test_mismatched": "test_mismatched",
            },
        ),
        _glue(
            "qnli",
            (("question",), ("sentence",)),
            ("label",),
            ("entailment", "not_entailment"),
            ("accuracy",),
        ),
        _glue(
            "qqp",
            (("question1",), ("question2",)),
            ("is_duplicate", "label"),
            ("not_duplicate", "duplicate"),
            ("accuracy", "f1"),
        ),
        _glue(
            "cola",
            (("sentence",),),
            ("label",),
            ("unacceptable", "acceptable"),
            ("mcc",),
            headerless_columns=("source", "label", "mark", "sentence"),
        ),
        _glue("stsb", _PAIR_COLUMNS, ("score", "label"), None, ("pearson", "spearman")),
        _glue(
            "mrpc",
            (("#1 String", "sentence1"), ("#2 String", "sentence2")),
            ("Quality", "label"),
            ("not_equivalent", "equivalent"),
            ("accuracy", "f1"),
        ),
        _glue("rte", _PAIR_COLUMNS, ("label",), ("entailment", "not_entailment"), ("accuracy",)),
    )
}

TASK_NAMES: tuple[str, ...] = tuple(TASKS)


def _normalise(name: str) -> str:
    """Fold case and drop dashes/underscores so "SST-2", "sts_b" and "stsb" name the same task."""
    return name.strip().lower().replace("-", "").replace("_", "")


def get_task(name: str) -> TaskSpec:
    """Return the spec of a GLUE task by name (case-insensitive; "sst-2" and "sts-b" are accepted)."""
    spec = TASKS.get(_normalise(name))
    if spec is not None:
        return spec
    message = f"unknown task {name!r}; valid tasks: {', '.join(TASK_NAMES)}"
    close = difflib.get_close_matches(_normalise(name), TASK_NAMES, n=1)
    if close:
        message += f" (did you mean {close[0]!r}?)"
    raise UserError(message)


def custom_task(
    num_text_fields: int,
    kind: str = CLASSIFICATION,
    label_names: Sequence[str] | None = None,
    *,
    name: str = "custom",
) -> TaskSpec:
    """Build a spec for user data that is not a GLUE task.

    Text columns default to common names (`text`/`sentence` for one field; `text_a`/`sentence1`/... and
    `text_b`/`sentence2`/... for pairs) and the label column to `label`; callers can override both when
    reading. Classification needs the class names in id order; labels in files may be those names or ids.
    """
    if num_text_fields not in (1, 2):
        raise UserError(f"custom task {name!r}: num_text_fields must be 1 or 2, got {num_text_fields}")
    if kind not in TASK_KINDS:
        raise UserError(f"custom task {name!r}: unknown kind {kind!r}; valid kinds: {', '.join(TASK_KINDS)}")
    if kind == REGRESSION:
        if label_names:
            raise UserError(f"custom task {name!r}: a regression task takes no label_names")
        names, metrics, aliases = None, ("pearson", "spearman"), {}
    else:
        if label_names is None or len(label_names) < 2 or len(set(label_names)) != len(label_names):
            raise UserError(
                f"custom task {name!r}: classification needs at least 2 distinct label_names in id order, "
                f"got {list(label_names or [])}"
            )
        names, metrics, aliases = tuple(label_names), ("accuracy", "f1", "mcc"), _aliases(label_names)
    if num_text_fields == 1:
        text_columns: tuple[tuple[str, ...], ...] = (("text", "sentence", "text_a", "sentence1"),)
    else:
        text_columns = (
            ("text_a", "sentence1", "premise", "question1", "question"),
            ("text_b", "sentence2", "hypothesis", "question2", "sentence"),
        )
    return TaskSpec(
        name=name,
        kind=kind,
        text_columns=text_columns,
        label_columns=("label", "labels", "score"),
        label_names=names,
        label_aliases=aliases,
        metrics=metrics,
        default_metric=metrics[0],
        hub_dataset=None,
    )
