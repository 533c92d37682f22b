"""What differs between task kinds, behind one interface the training loop and ``addrop eval`` share.

A pipeline reads a split, loads the model with the task's head, encodes and collates examples, and scores a
model on an evaluation loader. :class:`SequencePipeline` covers GLUE-style classification and regression,
:class:`TokenPipeline` named-entity recognition (CoNLL-2003 tags).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import transformers
from accelerate import Accelerator
from torch.nn import functional as F
from torch.utils.data import DataLoader
from transformers import AutoConfig, AutoModelForTokenClassification, PreTrainedModel

from addrop_cli.attribution import CLASSIFICATION, IGNORE_INDEX, REGRESSION, TOKEN
from addrop_cli.config import Recipe
from addrop_cli.data import encode_examples, make_collator, select_samples
from addrop_cli.errors import UserError
from addrop_cli.metrics import compute_metrics, seqeval_metrics
from addrop_cli.models import _load, load_classifier
from addrop_cli.recipes import resolve_path
from addrop_cli.splits import load_split
from addrop_cli.tasks import TaskSpec, get_task
from addrop_cli.token_data import encode_tagged, load_hub_tagged, read_tagged, token_collator


@dataclass
class EvalResult:
    metrics: dict[str, float]
    loss: float
    prediction_counts: dict[str, int]


class SequencePipeline:
    """Sentence and sentence-pair classification or regression (GLUE)."""

    def __init__(self, task: TaskSpec):
        self.task = task
        self.task_type = REGRESSION if task.is_regression else CLASSIFICATION
        self.metrics, self.default_metric = task.metrics, task.default_metric

    def read(self, recipe: Recipe, split: str) -> list | None:
        return load_split(recipe, self.task, split)

    def load_model(self, name: str, trust_remote_code: bool = False) -> PreTrainedModel:
        return load_classifier(name, self.task, trust_remote_code)

    def encode(self, items: list, tokenizer, recipe: Recipe) -> list[dict[str, Any]]:
        return encode_examples(items, tokenizer, recipe.data.max_length)

    def collator(self, tokenizer):
        return make_collator(tokenizer)

    def evaluate(self, model, loader: DataLoader, accelerator: Accelerator) -> EvalResult:
        """Metrics, mean loss and predicted-label counts over a (possibly sharded) evaluation split."""
        logits, labels = _gather_outputs(model, loader, accelerator)
        task = self.task
        if task.is_regression:
            predictions = logits.squeeze(-1)
            loss = F.mse_loss(predictions, labels.float()).item()
            counts: dict[str, int] = {}
        else:
            predictions = logits.argmax(-1)
            loss = F.cross_entropy(logits, labels).item()
            tally = torch.bincount(predictions, minlength=task.num_labels).tolist()
            counts = dict(zip(task.label_names, tally, strict=True))
        metrics = compute_metrics(task.metrics, predictions.numpy(), labels.numpy(), num_labels=task.num_labels)
        return EvalResult(metrics, loss, counts)


@dataclass(frozen=True)
class TokenTaskSpec:
    """A token-classification task: its tag set (ids in this order), hub dataset and metrics."""

    name: str
    label_names: tuple[str, ...]
    hub_dataset: tuple[str, str | None] | None = None
    metrics: tuple[str, ...] = ("precision", "recall", "f1", "accuracy")
    default_metric: str = "f1"


CONLL_TAGS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC")
TOKEN_TASKS = {"conll2003": TokenTaskSpec("conll2003", CONLL_TAGS, ("eriktks/conll2003", None))}


class TokenPipeline:
    """Named-entity recognition: word tags aligned to sub-words, seqeval entity-level scores."""

    task_type = TOKEN

    def __init__(self, task: TokenTaskSpec):
        self.task = task
        self.metrics, self.default_metric = task.metrics, task.default_metric
        self.label2id = {label: i for i, label in enumerate(task.label_names)}

    def read(self, recipe: Recipe, split: str) -> list | None:
        data = recipe.data
        path = resolve_path(getattr(data, f"{split}_file"))
        if path:
            sentences = read_tagged(path)
        elif data.dataset and split != "test":
            sentences = load_hub_tagged(data.dataset, data.dataset_config, split)
        elif split == "test":
            return None
        else:
            raise UserError(f"no {split} data: give --{split}-file (CoNLL columns, JSON or JSONL with tokens and "
                            "ner_tags) or set data.dataset to a hub dataset")
        return select_samples(sentences, data.max_train_samples if split == "train" else data.max_eval_samples)

    def load_model(self, name: str, trust_remote_code: bool = False) -> PreTrainedModel:
        names = self.task.label_names
        config = _load(AutoConfig.from_pretrained, name, "model config", trust_remote_code=trust_remote_code,
                       num_labels=len(names), id2label=dict(enumerate(names)),
                       label2id={label: i for i, label in enumerate(names)})
        verbosity = transformers.logging.get_verbosity()
        transformers.logging.set_verbosity_error()  # a fresh token-classification head is expected
        try:
            return _load(AutoModelForTokenClassification.from_pretrained, name, "model", config=config,
                         trust_remote_code=trust_remote_code)
        finally:
            transformers.logging.set_verbosity(verbosity)

    def encode(self, items: list, tokenizer, recipe: Recipe) -> list[dict[str, Any]]:
        return encode_tagged(items, tokenizer, self.label2id, recipe.data.max_length,
                             label_all_tokens=recipe.data.label_all_tokens)

    def collator(self, tokenizer):
        return token_collator(tokenizer)

    def evaluate(self, model, loader: DataLoader, accelerator: Accelerator) -> EvalResult:
        """seqeval over the first sub-word of each word (positions labelled -100 are skipped)."""
        logits, labels = _gather_outputs(model, loader, accelerator, pad_dim=1)
        real = labels != IGNORE_INDEX
        loss = F.cross_entropy(logits[real], labels[real]).item()
        predictions = logits.argmax(-1)
        names = self.task.label_names
        predicted_tags = [[names[p] for p, keep in zip(row, mask, strict=True) if keep]
                          for row, mask in zip(predictions.tolist(), real.tolist(), strict=True)]
        reference_tags = [[names[t] for t in row if t != IGNORE_INDEX] for row in labels.tolist()]
        tally = torch.bincount(predictions[real], minlength=len(names)).tolist()
        return EvalResult(seqeval_metrics(predicted_tags, reference_tags), loss, dict(zip(names, tally, strict=True)))


def _gather_outputs(model, loader: DataLoader, accelerator: Accelerator, pad_dim: int | None = None):
    """Logits and labels of a whole split, gathered from every process (padding duplicates dropped)."""
    model.eval()
    all_logits, all_labels = [], []
    with torch.no_grad():
        for batch in loader:
            logits, labels = model(**batch).logits.float(), batch["labels"]
            if pad_dim is not None:  # batches differ in length across processes and steps
                logits = accelerator.pad_across_processes(logits, dim=pad_dim)
                labels = accelerator.pad_across_processes(labels, dim=pad_dim, pad_index=IGNORE_INDEX)
            logits, labels = accelerator.gather_for_metrics((logits, labels))
            all_logits.append(logits.cpu())
            all_labels.append(labels.cpu())
    if pad_dim is not None:
        width = max(t.shape[pad_dim] for t in all_labels)
        all_logits = [F.pad(t, (0, 0, 0, width - t.shape[1])) for t in all_logits]
        all_labels = [F.pad(t, (0, width - t.shape[1]), value=IGNORE_INDEX) for t in all_labels]
    return torch.cat(all_logits), torch.cat(all_labels)


def pipeline_for(task_name: str) -> SequencePipeline | TokenPipeline:
    """The pipeline of a task name: a token task (conll2003) or a GLUE task."""
    token_task = TOKEN_TASKS.get(task_name.strip().lower().replace("-", "").replace("_", ""))
    if token_task is not None:
        return TokenPipeline(token_task)
    try:
        return SequencePipeline(get_task(task_name))
    except UserError as error:
        raise UserError(f"{error}; token-classification tasks: {', '.join(TOKEN_TASKS)}") from None
