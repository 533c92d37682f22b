"""Evaluation metrics reported in the AD-DROP paper: GLUE conventions (scikit-learn/scipy), entity-level
NER scores (seqeval) and corpus BLEU (sacrebleu)."""

from __future__ import annotations

import difflib
import importlib
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy import stats
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from addrop_cli.errors import UserError
from addrop_cli.tasks.registry import TaskSpec

METRIC_NAMES: tuple[str, ...] = ("accuracy", "f1", "mcc", "pearson", "spearman")


def _accuracy(predictions: np.ndarray, references: np.ndarray) -> float:
    return float(accuracy_score(references, predictions))


def _f1(predictions: np.ndarray, references: np.ndarray, num_labels: int | None) -> float:
    # GLUE reports F1 of the positive class for binary tasks (MRPC, QQP); macro F1 is the usual choice beyond.
    if num_labels is None:
        num_labels = max(int(predictions.max()), int(references.max())) + 1
    average = "binary" if num_labels <= 2 else "macro"
    return float(f1_score(references, predictions, average=average, zero_division=0))


def _mcc(predictions: np.ndarray, references: np.ndarray) -> float:
    return float(matthews_corrcoef(references, predictions))


def _correlation(statistic: Callable[..., object]) -> Callable[[np.ndarray, np.ndarray], float]:
    """Wrap a scipy correlation so a constant input gives 0.0 rather than NaN.

    Early checkpoints often predict a constant; NaN would poison "best checkpoint" comparisons. This
    matches sklearn's MCC, which is also 0.0 when undefined.
    """

    def compute(predictions: np.ndarray, references: np.ndarray) -> float:
        if np.ptp(predictions) == 0 or np.ptp(references) == 0:
            return 0.0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = float(statistic(predictions.astype(float), references.astype(float))[0])
        return 0.0 if np.isnan(value) else value

    return compute


# f1 is missing here: it also needs the class count, see compute_metrics.
_METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": _accuracy,
    "mcc": _mcc,
    "pearson": _correlation(stats.pearsonr),
    "spearman": _correlation(stats.spearmanr),
}


def _unknown_metric(name: str, valid: Sequence[str], context: str) -> UserError:
    """Build the error for a metric name outside `valid`, suggesting the closest one."""
    message = f"unknown metric {name!r}{context}; valid: {', '.join(valid)}"
    close = difflib.get_close_matches(name.lower(), valid, n=1)
    if close:
        message += f" (did you mean {close[0]!r}?)"
    return UserError(message)


def compute_metrics(
    names: Sequence[str],
    predictions: Sequence[float] | np.ndarray,
    references: Sequence[float] | np.ndarray,
    *,
    num_labels: int | None = None,
) -> dict[str, float]:
    """Compute each named metric of `predictions` against `references`, as plain floats.

    Classification predictions and references are class ids; regression ones are floats. Arrays of
    shape (n, 1) are flattened. `f1` is the F1 of class 1 for two classes and macro F1 for more; pass
    `num_labels` so a 3-class task whose batch happens to hold only classes 0 and 1 still gets macro F1.
    """
    preds = np.asarray(predictions).reshape(-1)
    refs = np.asarray(references).reshape(-1)
    if preds.shape != refs.shape:
        raise ValueError(f"{preds.size} predictions for {refs.size} references")
    if preds.size == 0:
        raise ValueError("cannot compute metrics of zero predictions")
    results = {}
    for name in names:
        if name not in METRIC_NAMES:
            raise _unknown_metric(name, METRIC_NAMES, "")
        results[name] = _f1(preds, refs, num_labels) if name == "f1" else _METRICS[name](preds, refs)
    return results


def validate_metric(name: str, task: TaskSpec) -> str:
    """Return `name` (case-folded) if it is one of `task`'s metrics, else raise UserError listing them."""
    folded = name.strip().lower()
    if folded not in task.metrics:
        raise _unknown_metric(name, task.metrics, f" for task {task.name}")
    return folded


# ------------------------------------------------------------------------------- NER and translation


def _optional(module: str, purpose: str) -> Any:
    """Import a package only some tasks need, or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise UserError(f"{purpose} need the {module} package: pip install {module}") from err


def seqeval_metrics(predictions: list[list[str]], references: list[list[str]]) -> dict[str, float]:
    """Entity-level precision, recall and F1 (micro-averaged over entities) and token accuracy, as floats.

    Tags are IOB strings ("B-PER", "I-PER", "O"), one list per sentence. Entities are read as conlleval
    does (seqeval's default mode, as HF's run_ner): a stray I- tag starts an entity. Undefined scores
    (no predicted or no true entities) are 0.0 rather than a warning.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predicted sentences for {len(references)} references")
    if not references:
        raise ValueError("cannot compute metrics of zero sentences")
    for index, (predicted, reference) in enumerate(zip(predictions, references, strict=True)):
        if len(predicted) != len(reference):
            raise ValueError(f"sentence {index}: {len(predicted)} predicted tags for {len(reference)} references")
    metrics = _optional("seqeval.metrics", "NER metrics")
    return {
        "precision": float(metrics.precision_score(references, predictions, zero_division=0)),
        "recall": float(metrics.recall_score(references, predictions, zero_division=0)),
        "f1": float(metrics.f1_score(references, predictions, zero_division=0)),
        "accuracy": float(metrics.accuracy_score(references, predictions)),
    }


def bleu_metrics(
    hypotheses: list[str], references: list[str], generated_lengths: list[int] | None = None
) -> dict[str, float]:
    """Corpus BLEU (sacrebleu defaults: 13a tokenization, one reference per sentence, 0-100 scale), and
    `gen_len`, the mean generated length in tokens, when `generated_lengths` is given (as HF run_translation)."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    if not references:
        raise ValueError("cannot compute BLEU of zero sentences")
    sacrebleu = _optional("sacrebleu", "BLEU scores")
    results = {"bleu": float(sacrebleu.corpus_bleu(hypotheses, [references]).score)}
    if generated_lengths is not None:
        if len(generated_lengths) != len(hypotheses):
            raise ValueError(f"{len(generated_lengths)} generated lengths for {len(hypotheses)} hypotheses")
        results["gen_len"] = float(np.mean(generated_lengths))
    return results
