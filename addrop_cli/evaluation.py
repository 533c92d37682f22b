"""Scoring a saved checkpoint on a split of its recipe's data."""

from __future__ import annotations

from accelerate import Accelerator
from torch.utils.data import DataLoader

from addrop_cli.config import Recipe
from addrop_cli.data import EncodedDataset, longest_first
from addrop_cli.errors import UserError
from addrop_cli.models import load_tokenizer
from addrop_cli.pipelines import EvalResult, pipeline_for


def evaluate_checkpoint(checkpoint: str, recipe: Recipe, split: str = "validation") -> EvalResult:
    """Score a saved checkpoint (e.g. a run's ``best/``) on ``split`` of the recipe's data."""
    pipeline = pipeline_for(recipe)
    items = pipeline.read(recipe, split)
    tokenizer = load_tokenizer(checkpoint)
    features = pipeline.encode(items, tokenizer, recipe) if items is not None else []
    if not features or "labels" not in features[0]:
        raise UserError(f"the {split} split has no labels to score against; give a labelled --{split}-file")
    accelerator = Accelerator(mixed_precision=recipe.train.mixed_precision)
    model = pipeline.load_model(checkpoint)
    dataset = EncodedDataset(features)
    loader = DataLoader(dataset, batch_size=recipe.train.eval_batch_size, sampler=longest_first(dataset),
                        collate_fn=pipeline.collator(tokenizer))
    model, loader = accelerator.prepare(model, loader)
    return pipeline.evaluate(model, loader, accelerator, tokenizer)
