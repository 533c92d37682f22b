"""What every task kind's pipeline offers the loop, ``addrop eval``, ``predict`` and ``attribute``
(:class:`Pipeline`), the result of scoring one, and the helpers they share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from transformers import PreTrainedModel

from addrop_cli.errors import UserError
from addrop_cli.recipe import Recipe
from addrop_cli.tasks.registry import AnyTaskSpec


@dataclass
class EvalResult:
    metrics: dict[str, float]
    loss: float
    prediction_counts: dict[str, int]
    count: int  # examples scored (sentences for token tasks, sentence pairs for translation)


class Pipeline(Protocol):
    """What the loop, ``addrop eval`` and ``addrop attribute`` need of a task kind."""

    task: AnyTaskSpec
    task_type: str  # classification, regression, token, seq2seq or generation (core.settings)
    metrics: tuple[str, ...]
    default_metric: str

    def read(self, recipe: Recipe, split: str) -> list | None:
        """The items of ``split`` (train, validation, test); None for a test split that is not configured."""

    def labelled(self, items: list) -> bool:
        """Whether the items carry what the task scores against (labels, tags, target texts)."""

    def label_counts(self, items: list) -> dict[str, int]:
        """Examples per class name, for classification; empty for other task kinds."""

    def load_model(self, name: str, trust_remote_code: bool = False, dtype: str = "float32") -> PreTrainedModel:
        """The model with the task's head (and label names in its config), its weights in ``dtype``
        (``train.model_dtype``)."""

    def encode(self, items: list, tokenizer, recipe: Recipe) -> list[dict[str, Any]]:
        """Tokenized features, with ``labels`` when the items are labelled."""

    def encode_text(self, text: str, text_pair: str | None, tokenizer, recipe: Recipe) -> dict[str, Any]:
        """One unlabelled input typed by a user."""

    def inputs_only(self, feature: dict[str, Any]) -> dict[str, Any]:
        """An encoded example as input to predict from: without its labels (generation: its prompt alone)."""

    def collator(self, tokenizer) -> Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]]:
        """Pads a list of features into a batch of tensors."""

    def evaluate(self, model, loader: DataLoader, accelerator: Accelerator, tokenizer) -> EvalResult:
        """Metrics, mean loss and predicted-label counts over a (possibly sharded) evaluation split."""

    def predict(self, model, loader: DataLoader, accelerator: Accelerator, tokenizer, items: list,
                recipe: Recipe) -> list[dict[str, Any]]:
        """One row per item, in order (the loader must not reorder): the input and the model's prediction."""


def without_labels(feature: dict[str, Any]) -> dict[str, Any]:
    """A labelled feature as model input alone (what most pipelines' ``inputs_only`` is)."""
    return {key: value for key, value in feature.items() if key != "labels"}


def refuse_pair(text_pair: str | None, task: str) -> None:
    if text_pair is not None:
        raise UserError(f"--text-pair is for sentence-pair tasks (e.g. mrpc, rte); {task} takes one --text")
