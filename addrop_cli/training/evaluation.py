"""Evaluation plumbing shared by the loop and ``addrop eval``: the Accelerator, evaluation loaders, and
scoring a saved checkpoint."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DataLoaderConfiguration, DistributedType, ProjectConfiguration, parse_flag_from_env
from torch.utils.data import DataLoader

from addrop_cli.errors import UserError
from addrop_cli.recipe import Recipe, TrainConfig
from addrop_cli.tasks.models import ensure_pad_token, load_tokenizer
from addrop_cli.tasks.pipelines import EvalResult, Pipeline, pipeline_for
from addrop_cli.training.batching import EncodedDataset, longest_first
from addrop_cli.training.run_dir import LOGS_DIR

SELF_PLACING_ENGINES = (DistributedType.FSDP, DistributedType.DEEPSPEED, DistributedType.MEGATRON_LM)


def build_accelerator(train: TrainConfig, trackers: list[str] | None = None) -> Accelerator:
    """The run's Accelerator. Loaders give global batches (per-device size x processes) that Accelerate
    splits across processes, so the same examples make up each update whatever the number of processes.
    ``trackers`` (Accelerate names) log under ``<output_dir>/logs`` where they write locally."""
    # Before the Accelerator, which could not be made again with another precision in this process. The CPU flag
    # is what the Accelerator reads: without it a torchrun process's state would be fixed as not distributed.
    use_cpu = parse_flag_from_env("ACCELERATE_USE_CPU")
    if train.mixed_precision == "fp16" and PartialState(cpu=use_cpu).device.type == "cpu":
        # Accelerate would run in fp32 without a word; refuse instead of reporting fp32 numbers as fp16.
        raise UserError("train.mixed_precision='fp16' needs a GPU, and this run is on the CPU: use bf16 (CPU "
                        "autocast) or no (--mixed-precision, or --set train.mixed_precision=no for eval)")
    try:
        project = ProjectConfiguration(project_dir=train.output_dir, logging_dir=str(Path(train.output_dir) / LOGS_DIR))
        return Accelerator(mixed_precision=train.mixed_precision,
                           gradient_accumulation_steps=train.gradient_accumulation_steps,
                           dataloader_config=DataLoaderConfiguration(split_batches=True), log_with=trackers or None,
                           project_config=project if trackers else None)
    except ValueError as error:
        raise UserError(f"train.mixed_precision={train.mixed_precision!r} is not available here: {error}") from None


def eval_loader(features: list[dict[str, Any]], batch_size: int, collate: Callable) -> DataLoader:
    """Longest first (far less padding; metrics do not depend on order), with a generator of its own so
    that iterating never draws from the global RNG that dropout and AD-DROP use."""
    dataset = EncodedDataset(features)
    return DataLoader(dataset, batch_size=batch_size, sampler=longest_first(dataset), collate_fn=collate,
                      generator=torch.Generator())


def labelled_split(pipeline: Pipeline, recipe: Recipe, split: str) -> list | None:
    """The items of ``split`` when they carry labels to score against, else None."""
    items = pipeline.read(recipe, split)
    return items if items is not None and pipeline.labelled(items) else None


def evaluate_checkpoint(checkpoint: str, recipe: Recipe, split: str = "validation") -> EvalResult:
    """Score a saved checkpoint (e.g. a run's ``best/``) on ``split`` of the recipe's data."""
    pipeline = pipeline_for(recipe)
    items = labelled_split(pipeline, recipe, split)
    if items is None:
        raise UserError(f"the {split} split has no labels to score against; give a labelled --{split}-file")
    tokenizer = load_tokenizer(checkpoint)
    accelerator = build_accelerator(recipe.train)
    loader = eval_loader(pipeline.encode(items, tokenizer, recipe),
                         recipe.train.eval_batch_size * accelerator.num_processes, pipeline.collator(tokenizer))
    model, loader = _prepare_for_inference(accelerator, _with_pad_token(pipeline.load_model(checkpoint), tokenizer),
                                           loader)
    return pipeline.evaluate(model, loader, accelerator, tokenizer)


def predict_items(checkpoint: str, recipe: Recipe, items: list, model=None) -> list[dict[str, Any]]:
    """One prediction row per item (the recipe's task's item type), in order, from ``model`` or else the
    checkpoint loaded with the task's head (see ``Pipeline.predict`` for the rows)."""
    pipeline = pipeline_for(recipe)
    tokenizer = load_tokenizer(checkpoint)
    features = [pipeline.inputs_only(feature) for feature in pipeline.encode(items, tokenizer, recipe)]
    accelerator = build_accelerator(recipe.train)
    # File order (no sampler): predictions line up with the input rows.
    loader = DataLoader(EncodedDataset(features), batch_size=recipe.train.eval_batch_size * accelerator.num_processes,
                        collate_fn=pipeline.collator(tokenizer), generator=torch.Generator())
    model = _with_pad_token(model or pipeline.load_model(checkpoint), tokenizer)
    model, loader = _prepare_for_inference(accelerator, model, loader)
    return pipeline.predict(model, loader, accelerator, tokenizer, items, recipe)


def _with_pad_token(model: torch.nn.Module, tokenizer) -> torch.nn.Module:
    """The model, its tokenizer given a pad token by training's rule (a checkpoint that never went through
    ``addrop train``, such as a base LLM scored zero-shot, may have none)."""
    ensure_pad_token(model, tokenizer)
    return model


def _prepare_for_inference(accelerator: Accelerator, model: torch.nn.Module, loader: DataLoader):
    """The model on the device in the run's precision, not wrapped in DDP (inference has no gradients to
    synchronize, and a DDP reducer would hold the process group), and the loader sharded across processes.
    Engines that shard or place the model themselves (FSDP, DeepSpeed, Megatron-LM) get their own wrapper."""
    if accelerator.distributed_type in SELF_PLACING_ENGINES:
        return accelerator.prepare(model, loader)
    return accelerator.prepare_model(model, evaluation_mode=True), accelerator.prepare_data_loader(loader)
