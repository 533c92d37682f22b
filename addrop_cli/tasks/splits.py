"""Which items a run reads for each split: local files first, then a hub dataset."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import TypeVar

from addrop_cli.errors import UserError
from addrop_cli.recipe import Recipe, resolve_path
from addrop_cli.tasks.glue_data import Example, load_hub_examples, read_examples
from addrop_cli.tasks.registry import TaskSpec

T = TypeVar("T")


def read_split(
    recipe: Recipe, split: str, read_file: Callable[[str], list], read_hub: Callable[[str], list], formats: str
) -> list | None:
    """Items of ``split`` (train, validation, test): ``read_file`` on the split's file when given, else
    ``read_hub`` on the split name when ``data.dataset`` is set (never for test). ``formats`` names the file
    formats in the error. Returns None for a test split that is not configured.
    """
    data = recipe.data
    held_out = data.holdout_fraction is not None and split in ("train", "validation")
    source = "train" if held_out else split
    path = resolve_path(getattr(data, f"{source}_file"))
    if path:
        items = read_file(path)
    elif data.dataset and source != "test":
        items = read_hub(source)
    elif source == "test":
        return None
    else:
        raise UserError(f"no {source} data: give --{source}-file ({formats}) or set data.dataset to a hub dataset")
    if held_out:
        kept, selection = holdout_split(items, data.holdout_fraction, recipe.train.seed)
        items = selection if split == "validation" else kept
    if split == "train":
        items = training_regime(items, data.k_shot, data.train_fraction, recipe.train.seed)
    return select_samples(items, data.max_train_samples if split == "train" else data.max_eval_samples)


def select_samples(examples: Sequence[T], max_samples: int | None) -> list[T]:
    """Keep the first `max_samples` examples (all when None), as HF's run_glue does."""
    if max_samples is None:
        return list(examples)
    if max_samples < 1:
        raise UserError(f"max_samples must be a positive integer or unset, got {max_samples}")
    return list(examples[:max_samples])


def holdout_split(items: list, fraction: float, seed: int) -> tuple[list, list]:
    """(training items, held-out selection items): a seeded share of the training set (at least one item,
    at least one left), used for model selection so the dev set can serve as an untouched test set."""
    if len(items) < 2:
        raise UserError(f"data.holdout_fraction={fraction}: the training set has {len(items)} item(s); "
                        "it needs at least 2 to hold some out")
    count = min(len(items) - 1, max(1, round(fraction * len(items))))
    held = set(random.Random(f"holdout-{seed}").sample(range(len(items)), count))
    return [x for i, x in enumerate(items) if i not in held], [x for i, x in enumerate(items) if i in held]


def training_regime(items: list, k_shot: int | None, fraction: float | None, seed: int) -> list:
    """The few-shot or data-size subset of a training set (paper Table 5 and Fig. 5), drawn with ``seed``.

    ``k_shot``: exactly k examples of every class (classification only); ``fraction``: a share of all
    examples (at least one). The kept examples stay in their file order.
    """
    rng = random.Random(seed)
    if fraction is not None:
        keep = rng.sample(range(len(items)), max(1, round(fraction * len(items))))
        return [items[i] for i in sorted(keep)]
    if k_shot is None:
        return items
    labels = [getattr(item, "label", None) for item in items]
    if any(label is None or isinstance(label, float) for label in labels):
        raise UserError("data.k_shot needs a classification task with labelled training examples")
    by_class: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        by_class.setdefault(label, []).append(index)
    keep = []
    for label in sorted(by_class):
        if len(by_class[label]) < k_shot:
            raise UserError(f"data.k_shot={k_shot}: class {label} has only {len(by_class[label])} training "
                            "examples; use a smaller k")
        keep += rng.sample(by_class[label], k_shot)
    return [items[i] for i in sorted(keep)]


def load_split(recipe: Recipe, task: TaskSpec, split: str) -> list[Example] | None:
    """GLUE-style examples of ``split`` from local files or a hub dataset (see :func:`read_split`)."""
    data = recipe.data

    def read_file(path: str) -> list[Example]:
        return read_examples(path, task, text_columns=data.text_columns, label_column=data.label_column,
                             require_labels=split != "test")

    def read_hub(name: str) -> list[Example]:
        if name not in task.hub_splits:
            raise UserError(f"task {task.name} has no hub split {name!r}; valid: {', '.join(task.hub_splits)}")
        return load_hub_examples(data.dataset, data.dataset_config, task.hub_splits[name], task)

    return read_split(recipe, split, read_file, read_hub, "TSV, CSV, JSON or JSONL")
