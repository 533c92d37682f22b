"""Every task addrop knows, by name: the GLUE tasks, CoNLL-2003 NER, WMT16 translation, and generation
(prompt → completion fine-tuning of decoder-only models).

A :class:`TaskSpec` says where a GLUE task's text and label live (in GLUE's TSV layout and in the
``nyu-mll/glue`` hub layout), how raw labels map to class ids, and which metrics the paper reports for it;
:class:`TokenTaskSpec` and :class:`Seq2SeqTaskSpec` do the same for tagging and translation. Names are
matched by :func:`addrop_cli.recipe.name_key` (``SST-2`` is ``sst2``).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass, field

from addrop_cli.core.settings import CLASSIFICATION, GENERATION, REGRESSION, SEQ2SEQ, TOKEN
from addrop_cli.errors import UserError
from addrop_cli.recipe import Recipe, name_key

_DEFAULT_HUB_SPLITS = {"train": "train", "validation": "validation", "test": "test"}
# The values each metric a task reports can take (gen_len, a length, has no upper bound and is left out):
# heatmap colour scales stay inside them.
METRIC_RANGES: dict[str, tuple[float, float]] = {
    "accuracy": (0.0, 1.0), "f1": (0.0, 1.0), "precision": (0.0, 1.0), "recall": (0.0, 1.0),
    "mcc": (-1.0, 1.0), "pearson": (-1.0, 1.0), "spearman": (-1.0, 1.0), "bleu": (0.0, 100.0),
    "exact_match": (0.0, 1.0),
}


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

@dataclass(frozen=True)
class TokenTaskSpec:
    """A token-classification task: its tag set (ids in this order), hub dataset and metrics."""

    name: str
    label_names: tuple[str, ...]
    hub_dataset: tuple[str, str | None] | None = None
    metrics: tuple[str, ...] = ("precision", "recall", "f1", "accuracy")
    default_metric: str = "f1"
    kind: str = TOKEN


@dataclass(frozen=True)
class Seq2SeqTaskSpec:
    """A translation task: its language pair (overridable by data.source_lang / data.target_lang) and hub data."""

    name: str
    source_lang: str
    target_lang: str
    hub_dataset: tuple[str, str] | None = None
    metrics: tuple[str, ...] = ("bleu", "gen_len")
    default_metric: str = "bleu"
    kind: str = SEQ2SEQ


@dataclass(frozen=True)
class GenerationTaskSpec:
    """Generative fine-tuning: free-form completions scored by exact match of the greedy answer, or a
    classification task's rows rendered as prompts (``source``) whose answer words (``answers``, in label order)
    are scored by accuracy. Completion perplexity is reported beside either."""

    name: str
    metrics: tuple[str, ...] = ("exact_match",)
    default_metric: str = "exact_match"
    answers: tuple[str, ...] | None = None
    source: TaskSpec | None = None
    kind: str = GENERATION

    @property
    def label_names(self) -> tuple[str, ...] | None:
        return None if self.source is None else self.source.label_names


def answered(task: TaskSpec, answers: Sequence[str]) -> GenerationTaskSpec:
    """``task`` as generation: its rows prompt for one of ``answers`` (one per class), scored by accuracy."""
    return GenerationTaskSpec(task.name, ("accuracy",), "accuracy", tuple(answers), task)


CONLL_TAGS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC")
TOKEN_TASKS = {"conll2003": TokenTaskSpec("conll2003", CONLL_TAGS, ("eriktks/conll2003", None))}
SEQ2SEQ_TASKS = {
    "wmt16enro": Seq2SeqTaskSpec("wmt16-en-ro", "en", "ro", ("wmt16", "ro-en")),
    "wmt16tren": Seq2SeqTaskSpec("wmt16-tr-en", "tr", "en", ("wmt16", "tr-en")),
}
GENERATION_TASKS = {"generation": GenerationTaskSpec("generation")}
AnyTaskSpec = TaskSpec | TokenTaskSpec | Seq2SeqTaskSpec | GenerationTaskSpec
ALL_TASKS: dict[str, AnyTaskSpec] = {**TASKS, **TOKEN_TASKS, **SEQ2SEQ_TASKS, **GENERATION_TASKS}
TASK_NAMES: tuple[str, ...] = tuple(spec.name for spec in ALL_TASKS.values())


def get_task(name: str) -> AnyTaskSpec:
    """The spec of a task by name (case, dashes and underscores ignored: "SST-2", "wmt16_en_ro")."""
    spec = ALL_TASKS.get(name_key(name))
    if spec is not None:
        return spec
    message = f"unknown task {name!r}; valid tasks: {', '.join(TASK_NAMES)}"
    close = difflib.get_close_matches(name_key(name), list(ALL_TASKS), n=1)
    if close:
        message += f" (did you mean {ALL_TASKS[close[0]].name!r}?)"
    raise UserError(message)


def task_kind(recipe: Recipe) -> str:
    """What the recipe trains: its task's kind, or generation for a classification task given a template."""
    return GENERATION if recipe.generation.enabled else get_task(recipe.task).kind
