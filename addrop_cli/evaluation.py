"""Evaluation: metrics over a (possibly sharded) split, and scoring a saved checkpoint."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from accelerate import Accelerator
from torch.nn import functional as F
from torch.utils.data import DataLoader

from addrop_cli.config import Recipe
from addrop_cli.data import EncodedDataset, encode_examples, make_collator
from addrop_cli.errors import UserError
from addrop_cli.metrics import compute_metrics
from addrop_cli.models import load_classifier, load_tokenizer
from addrop_cli.splits import load_split
from addrop_cli.tasks import TaskSpec, get_task


@dataclass
class EvalResult:
    metrics: dict[str, float]
    loss: float
    prediction_counts: dict[str, int]


def evaluate(model, dataloader: DataLoader, accelerator: Accelerator, task: TaskSpec) -> EvalResult:
    """Metrics, mean loss and predicted-label counts over a (possibly sharded) evaluation split."""
    model.eval()
    all_logits, all_labels = [], []
    with torch.no_grad():
        for batch in dataloader:
            logits = model(**batch).logits.float()
            logits, labels = accelerator.gather_for_metrics((logits, batch["labels"]))
            all_logits.append(logits.cpu())
            all_labels.append(labels.cpu())
    logits, labels = torch.cat(all_logits), torch.cat(all_labels)
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


def evaluate_checkpoint(checkpoint: str, recipe: Recipe, split: str = "validation") -> EvalResult:
    """Score a saved checkpoint (e.g. a run's ``best/``) on ``split`` of the recipe's data."""
    task = get_task(recipe.task)
    examples = load_split(recipe, task, split)
    if examples is None or examples[0].label is None:
        raise UserError(f"the {split} split has no labels to score against; give a labelled --{split}-file")
    accelerator = Accelerator(mixed_precision=recipe.train.mixed_precision)
    tokenizer = load_tokenizer(checkpoint)
    model = load_classifier(checkpoint, task)
    dataset = EncodedDataset(encode_examples(examples, tokenizer, recipe.data.max_length))
    loader = DataLoader(dataset, batch_size=recipe.train.eval_batch_size, collate_fn=make_collator(tokenizer))
    model, loader = accelerator.prepare(model, loader)
    return evaluate(model, loader, accelerator, task)
