"""Which examples a run reads for each split: local files first, then a hub dataset."""

from __future__ import annotations

from addrop_cli.config import Recipe
from addrop_cli.data import Example, load_hub_examples, read_examples, select_samples
from addrop_cli.errors import UserError
from addrop_cli.recipes import resolve_path
from addrop_cli.tasks import TaskSpec


def load_split(recipe: Recipe, task: TaskSpec, split: str) -> list[Example] | None:
    """Examples of ``split`` (train, validation, test) from local files or a hub dataset.

    Local files win over ``data.dataset``. Returns None for a test split that is not configured.
    """
    data = recipe.data
    path = resolve_path(getattr(data, f"{split}_file"))
    if path:
        examples = read_examples(path, task, text_columns=data.text_columns, label_column=data.label_column,
                                 require_labels=split != "test")
    elif data.dataset and split in task.hub_splits and split != "test":
        examples = load_hub_examples(data.dataset, data.dataset_config, task.hub_splits[split], task)
    elif split == "test":
        return None
    else:
        raise UserError(
            f"no {split} data: give --{split}-file (TSV, CSV, JSON or JSONL) or set data.dataset to a hub dataset"
        )
    limit = data.max_train_samples if split == "train" else data.max_eval_samples
    return select_samples(examples, limit)
