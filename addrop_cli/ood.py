"""The out-of-distribution evaluation engine (paper Table 6): a checkpoint scored on HANS or PAWS through its
own task's head, its predicted labels mapped onto the set's by name; accuracy overall and, for HANS, per
heuristic and gold label as the HANS paper reports it."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from addrop_cli.recipe import Recipe
from addrop_cli.tasks.glue_data import Example
from addrop_cli.tasks.models import load_pretrained
from addrop_cli.tasks.ood_data import OOD_SETS, map_labels, read_ood_file, read_ood_hub
from addrop_cli.training.evaluation import predict_items


@dataclass
class OodResult:
    task: str
    accuracy: float
    count: int
    mapping: dict[str, str]
    predictions: dict[str, int]  # the set's label -> how often it was predicted
    by_heuristic: dict[str, dict[str, float]] = field(default_factory=dict)  # heuristic -> gold label -> accuracy

    def to_json(self) -> dict[str, Any]:
        return {"task": self.task, "accuracy": self.accuracy, "examples": self.count, "label_mapping": self.mapping,
                "predictions": self.predictions, "by_heuristic": self.by_heuristic}


def evaluate_ood(checkpoint: str, recipe: Recipe, task: str, file: Path | None = None, config: str | None = None,
                 max_examples: int | None = None) -> OodResult:
    """Score ``checkpoint`` (trained with ``recipe``) on ``task`` ("hans" or "paws") from a local ``file`` or
    the Hub (``config``: a PAWS-X language). UserError when the checkpoint's labels do not map by name."""
    import torch
    from transformers import AutoModelForSequenceClassification

    target = OOD_SETS[task]
    # The checkpoint's own head and label names (not the task's), so that classes map by name in any order.
    model = load_pretrained(AutoModelForSequenceClassification.from_pretrained, checkpoint, "model")
    names = [model.config.id2label[index] for index in sorted(model.config.id2label)]
    mapping = map_labels(names, target)  # before any data is read
    examples = read_ood_file(file, target) if file is not None else read_ood_hub(target, config)
    examples = examples[:max_examples] if max_examples else examples
    rows = predict_items(checkpoint, recipe, [Example(e.text_a, e.text_b, None) for e in examples], model)
    # The probabilities come in the head's output order, which ``names`` follows.
    chosen = [names[int(torch.tensor(list(row["probabilities"].values())).argmax())] for row in rows]
    predicted = [target.labels.index(mapping[name]) for name in chosen]
    hits = [guess == example.label for guess, example in zip(predicted, examples, strict=True)]
    tally: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for hit, example in zip(hits, examples, strict=True):
        if "heuristic" in example.group:
            tally[example.group["heuristic"]][target.labels[example.label]].append(hit)
    by_heuristic = {heuristic: {label: sum(cell) / len(cell) for label, cell in sorted(labels.items())}
                    for heuristic, labels in sorted(tally.items())}
    predictions = {label: predicted.count(index) for index, label in enumerate(target.labels)}
    return OodResult(task, sum(hits) / len(hits), len(hits), mapping, predictions, by_heuristic)
