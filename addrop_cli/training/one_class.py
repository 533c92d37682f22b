"""Whether a run's evaluation predictions fell into one class, read without torch: the loop warns about it each
epoch, and a sweep marks trials whose best epoch did (their scores say nothing about the settings they tried)."""

from __future__ import annotations

from pathlib import Path

from addrop_cli.core.settings import CLASSIFICATION
from addrop_cli.errors import UserError
from addrop_cli.tasks.registry import get_task
from addrop_cli.training.run_dir import read_history

# At least this share of the predictions in one class is "one class" (train's warning and the sweep alike).
ONE_CLASS_SHARE = 0.95


def majority_share(prediction_counts: dict[str, int]) -> float | None:
    """The share of evaluation predictions in the most-predicted class (drift toward one class shows here)."""
    total = sum(prediction_counts.values())
    return max(prediction_counts.values()) / total if total else None


def majority_class(prediction_counts: dict[str, int]) -> tuple[str, float] | None:
    """The most-predicted class and its share; None without predictions or with fewer than two classes."""
    share = majority_share(prediction_counts) if len(prediction_counts) >= 2 else None
    if share is None:
        return None
    return max(prediction_counts.items(), key=lambda item: item[1])[0], share


def is_one_class(share: float) -> bool:
    return share >= ONE_CLASS_SHARE


def share_text(label: str, share: float) -> str:
    """``100 % positive``, ``97.3 % negative``: rounded down, so a share below 100 % never reads as 100 %."""
    percent = int(share * 1000) / 10
    return f"{percent:g} % {label}"


def best_epoch_majority(output_dir: Path, task: str, best_epoch: int) -> tuple[str, float] | None:
    """The most-predicted class at a run's best epoch and its share, from its ``history.jsonl``.

    None for tasks without classes to predict (regression scores, NER tags, translations), and for a run whose
    history is gone or lacks that epoch's prediction counts (written before they were recorded).
    """
    if get_task(task).kind != CLASSIFICATION:
        return None
    try:
        history = read_history(output_dir)
    except UserError:
        return None
    epoch = next((row for row in history if row.get("epoch") == best_epoch), {})
    return majority_class(epoch.get("eval_predictions") or {})
