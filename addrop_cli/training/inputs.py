"""The inputs of a run, checked without training: what ``addrop sweep`` verifies before it writes anything."""

from __future__ import annotations

import json

from transformers import AutoConfig

from addrop_cli.recipe import Recipe
from addrop_cli.tasks.metrics import validate_metric
from addrop_cli.tasks.models import load_pretrained, load_tokenizer
from addrop_cli.tasks.pipelines import pipeline_for


def check_inputs(recipes: list[Recipe], trust_remote_code: bool = False) -> None:
    """Raise the UserError ``addrop train`` would raise first for any of ``recipes``: a bad metric, a missing or
    malformed data file, a model or tokenizer that cannot be loaded. Each distinct task, model and data setting
    is checked once, and only the model's config is loaded (not its weights)."""
    seen = set()
    for recipe in recipes:
        values = recipe.to_dict()
        key = json.dumps([values["task"], values["model"], values["data"]], sort_keys=True, default=str)
        if key in seen:
            continue
        seen.add(key)
        pipeline = pipeline_for(recipe)
        validate_metric(recipe.train.metric or pipeline.default_metric, pipeline.task)
        for split in ("train", "validation", "test"):
            pipeline.read(recipe, split)
        load_tokenizer(recipe.model, trust_remote_code)
        load_pretrained(AutoConfig.from_pretrained, recipe.model, "model", trust_remote_code=trust_remote_code)
