"""The one training loop (Accelerate): plain fine-tuning and cross-tuned AD-DROP through the same steps."""

from __future__ import annotations

import importlib.metadata
import json
import math
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch.utils.data import BatchSampler, DataLoader, RandomSampler
from transformers import get_linear_schedule_with_warmup

from addrop_cli import __version__
from addrop_cli.checkpoints import (
    CHECKPOINTS_DIR,
    TrainingState,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from addrop_cli.config import Recipe, dump_yaml, load_yaml
from addrop_cli.data import EncodedDataset, LengthGroupedBatchSampler, longest_first
from addrop_cli.errors import UserError
from addrop_cli.evaluation import evaluate_checkpoint
from addrop_cli.metrics import validate_metric
from addrop_cli.models import load_tokenizer, max_model_length
from addrop_cli.outputs import write_dir, write_json, write_jsonl, write_text
from addrop_cli.pipelines import pipeline_for
from addrop_cli.regularizer import ADDrop, epoch_phase

RECIPE_FILE, HISTORY_FILE, METRICS_FILE, BEST_DIR = "recipe.yaml", "history.jsonl", "metrics.json", "best"
VERSIONED_PACKAGES = ("torch", "transformers", "accelerate", "datasets")


def package_versions() -> dict[str, str]:
    versions = {"addrop": __version__}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


# -------------------------------------------------------------------------------------------- training


@dataclass
class RunResult:
    output_dir: Path
    best_epoch: int
    best_eval: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)
    test: dict[str, float] | None = None


def _optimizer(model: torch.nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """AdamW without weight decay on biases and LayerNorm weights; fused kernels where available."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        (no_decay if parameter.ndim < 2 or "norm" in name.lower() else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": recipe.train.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    options = {"lr": recipe.train.lr, "eps": recipe.train.adam_epsilon}
    try:
        # The default foreach AdamW costs ~6x the fused one on CPU for a 22M-parameter model.
        return torch.optim.AdamW(groups, fused=True, **options)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, **options)


def _train_batches(dataset: EncodedDataset, recipe: Recipe, batch_size: int):
    if recipe.data.group_by_length:
        return LengthGroupedBatchSampler(dataset.lengths, batch_size, seed=recipe.train.seed)
    return BatchSampler(RandomSampler(dataset, generator=torch.Generator().manual_seed(recipe.train.seed)),
                        batch_size, drop_last=False)


def _save_best(model, tokenizer, recipe_text: str, directory: Path) -> None:
    def fill(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / RECIPE_FILE).write_text(recipe_text, encoding="utf-8")

    write_dir(directory, fill)


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM arrived: the current step finished and a checkpoint was written."""

    def __init__(self, signum: int, checkpoint: Path):
        self.signum, self.checkpoint = signum, checkpoint
        super().__init__(f"interrupted by {signal.Signals(signum).name}; checkpoint saved in {checkpoint}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class TrainingDiverged(Exception):
    """The training loss became NaN or infinite; the last good checkpoint is kept."""


class _StopRequest:
    """Turns SIGINT/SIGTERM into a flag the loop checks between steps (restoring the old handlers after)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopRequest:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def _prepare_output_dir(output_dir: Path, recipe: Recipe, overwrite: bool, resume: bool) -> Path | None:
    """Check the directory against this run; returns the checkpoint to resume from, if any.

    A directory holding a different run is refused unless ``overwrite`` (which clears our files from it).
    The same run with a checkpoint is resumed; ``resume`` without a checkpoint is an error.
    """
    previous = output_dir / RECIPE_FILE
    if overwrite:
        for name in (RECIPE_FILE, HISTORY_FILE, METRICS_FILE):
            (output_dir / name).unlink(missing_ok=True)
        for name in (BEST_DIR, CHECKPOINTS_DIR):
            shutil.rmtree(output_dir / name, ignore_errors=True)
        return None
    if previous.is_file() and load_yaml(previous) != recipe.to_dict():
        raise UserError(
            f"output directory {output_dir} holds a different run (its {RECIPE_FILE} differs); "
            "pass --overwrite to replace it, or choose another --output-dir"
        )
    checkpoint = latest_checkpoint(output_dir) if previous.is_file() else None
    if resume and checkpoint is None:
        raise UserError(f"--resume: {output_dir} holds no checkpoint to resume from (run without --resume)")
    return checkpoint


def train(
    recipe: Recipe,
    *,
    overwrite: bool = False,
    resume: bool = False,
    trust_remote_code: bool = False,
    console: Console | None = None,
) -> RunResult:
    """Fine-tune ``recipe.model`` on ``recipe.task``; AD-DROP per the cross-tuning schedule.

    Writes ``recipe.yaml``, ``history.jsonl``, ``metrics.json``, ``best/`` and ``checkpoints/`` to
    ``recipe.train.output_dir``. A directory holding a checkpoint of the same run is resumed exactly where it
    stopped. Raises :class:`TrainingInterrupted` on SIGINT/SIGTERM (after checkpointing) and
    :class:`TrainingDiverged` on a non-finite loss.
    """
    cfg = recipe.train
    pipeline = pipeline_for(recipe)
    metric = validate_metric(cfg.metric or pipeline.default_metric, pipeline.task)
    output_dir = Path(cfg.output_dir)
    checkpoint = _prepare_output_dir(output_dir, recipe, overwrite, resume)
    train_items = pipeline.read(recipe, "train")
    eval_items = pipeline.read(recipe, "validation")
    test_items = pipeline.read(recipe, "test")

    try:
        accelerator = Accelerator(mixed_precision=cfg.mixed_precision,
                                  gradient_accumulation_steps=cfg.gradient_accumulation_steps,
                                  dataloader_config=DataLoaderConfiguration(split_batches=True))
    except ValueError as error:
        raise UserError(f"train.mixed_precision={cfg.mixed_precision!r} is not available here: {error}") from None
    console = console or Console(stderr=True)
    show = accelerator.is_main_process
    set_seed(cfg.seed)

    tokenizer = load_tokenizer(recipe.model, trust_remote_code)
    model = pipeline.load_model(recipe.model, trust_remote_code)
    limit = max_model_length(model, tokenizer)
    if limit is not None and recipe.data.max_length > limit:
        raise UserError(f"data.max_length={recipe.data.max_length} exceeds what model '{recipe.model}' accepts "
                        f"({limit} tokens); use --max-length {limit} or less")
    train_set = EncodedDataset(pipeline.encode(train_items, tokenizer, recipe))
    eval_set = EncodedDataset(pipeline.encode(eval_items, tokenizer, recipe))
    collate = pipeline.collator(tokenizer)
    # Global batches (per-device size x processes), split across processes by Accelerate: the same examples
    # make up each update whatever the number of processes.
    batches = _train_batches(train_set, recipe, cfg.batch_size * accelerator.num_processes)
    # Loaders get their own generators so that creating an iterator never draws from the global RNG,
    # which dropout and AD-DROP's masks use (a resumed run must see the same draws).
    train_loader = DataLoader(train_set, batch_sampler=batches, collate_fn=collate, generator=torch.Generator())
    eval_loader = DataLoader(eval_set, batch_size=cfg.eval_batch_size * accelerator.num_processes,
                             sampler=longest_first(eval_set), collate_fn=collate, generator=torch.Generator())
    optimizer = _optimizer(model, recipe)
    updates_per_epoch = math.ceil(len(train_loader) / cfg.gradient_accumulation_steps)
    total_updates = updates_per_epoch * cfg.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total_updates), total_updates)
    model, optimizer, train_loader, eval_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, eval_loader, scheduler
    )
    addrop = ADDrop(model, recipe.addrop, pipeline.task_type) if recipe.addrop.enabled else None

    recipe_text = dump_yaml(recipe.to_dict(), header="# Resolved by addrop; "
                            + ", ".join(f"{k} {v}" for k, v in package_versions().items()) + "\n")
    state = TrainingState()
    if checkpoint is not None:
        state = load_checkpoint(accelerator, checkpoint)
        if show:
            console.print(f"resuming from {checkpoint} (epoch {state.epoch}, step {state.step_in_epoch})")
    elif show:
        write_text(output_dir / RECIPE_FILE, recipe_text)
    if state.finished:
        if show:
            console.print(f"run in {output_dir} is already complete; pass --overwrite to train again")
        return RunResult(output_dir, state.best_epoch, state.best_eval, state.history, state.test)

    def checkpoint_now() -> Path:
        if not math.isfinite(state.loss_sum):
            last = latest_checkpoint(output_dir)
            raise TrainingDiverged(
                f"the training loss became non-finite at epoch {state.epoch}, step {state.step_in_epoch} "
                f"(lower --lr or use --mixed-precision no); last good checkpoint: "
                + (str(last) if last else "none was written before it")
            )
        return save_checkpoint(accelerator, output_dir, state, cfg.save_total_limit)

    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[speed]} samples/s"),
                        TimeElapsedColumn(), console=console, disable=not show, transient=True)
    with progress, _StopRequest() as stop:
        while state.epoch <= cfg.epochs and not state.finished:
            epoch = state.epoch
            phase = epoch_phase(epoch, recipe.addrop)
            if isinstance(batches, LengthGroupedBatchSampler):
                batches.set_epoch(epoch)
            else:
                batches.sampler.generator.manual_seed(cfg.seed + epoch)
            bar = progress.add_task(f"epoch {epoch}/{cfg.epochs} {phase}", total=len(train_loader),
                                    completed=state.step_in_epoch, loss="-", speed="-")
            model.train()
            loss_sum = torch.tensor(state.loss_sum, device=accelerator.device)
            resumed_at, started = state.step_in_epoch, time.perf_counter() - state.seconds
            loader = accelerator.skip_first_batches(train_loader, resumed_at) if resumed_at else train_loader
            # Accelerate re-seeds the batch sampler with the loader's own iteration count when iterating (a
            # resumed run's fresh loader would count from 0), so that count is set to the epoch too.
            loader.set_epoch(epoch)
            for step, batch in enumerate(loader, start=resumed_at + 1):
                with accelerator.accumulate(model):
                    loss = addrop.loss(batch) if phase == "addrop" else model(**batch).loss
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and cfg.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad()
                loss_sum += loss.detach()
                state.samples += batch["input_ids"].shape[0] * accelerator.num_processes
                state.step_in_epoch = step
                if accelerator.sync_gradients:
                    state.global_step += 1
                logging = step % cfg.log_every == 0 or step == len(train_loader)
                saving = accelerator.sync_gradients and cfg.save_steps and state.global_step % cfg.save_steps == 0
                stopping = _stop_requested(stop, accelerator)
                if logging or saving or stopping:
                    # .item() only here: no host synchronisation inside the step.
                    state.loss_sum, state.seconds = loss_sum.item(), time.perf_counter() - started
                    if not math.isfinite(state.loss_sum):
                        checkpoint_now()  # raises TrainingDiverged
                    if show:
                        progress.update(bar, completed=step, loss=f"{state.loss_sum / step:.4f}",
                                        speed=f"{state.samples / state.seconds:.1f}")
                if (saving and step < len(train_loader)) or stopping:  # epoch ends checkpoint below
                    saved = checkpoint_now()
                    if stopping:
                        raise TrainingInterrupted(stop.signum or signal.SIGTERM, saved)
            seconds = time.perf_counter() - started
            train_loss = accelerator.gather(loss_sum[None]).mean().item() / max(len(train_loader), 1)
            progress.remove_task(bar)
            result = pipeline.evaluate(model, eval_loader, accelerator, tokenizer)
            record = {"epoch": epoch, "phase": phase, "train_loss": train_loss, "eval": result.metrics,
                      "eval_loss": result.loss, "eval_predictions": result.prediction_counts,
                      "seconds": round(seconds, 3), "train_samples_per_second": round(state.samples / seconds, 3)}
            state.history.append(record)
            value = result.metrics[metric]
            improved = value > state.best_value
            if improved:
                state.best_value, state.best_epoch, state.best_eval = value, epoch, result.metrics
                state.stale_epochs = 0
            else:
                state.stale_epochs += 1
            if show:
                write_jsonl(output_dir / HISTORY_FILE, state.history)
                if improved:
                    _save_best(accelerator.unwrap_model(model), tokenizer, recipe_text, output_dir / BEST_DIR)
                    write_json(output_dir / METRICS_FILE, _metrics_summary(recipe, metric, state))
                shown = ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items())
                console.print(f"epoch {epoch} ({phase}) train loss {train_loss:.4f} | eval {shown}"
                              f"{' (best)' if improved else ''} | {seconds:.1f}s")
            early_stop = cfg.patience is not None and state.stale_epochs >= cfg.patience
            if early_stop and show:
                console.print(f"early stopping: no {metric} gain for {state.stale_epochs} epochs")
            state.epoch, state.step_in_epoch, state.loss_sum, state.samples, state.seconds = epoch + 1, 0, 0.0, 0, 0.0
            state.finished = early_stop or state.epoch > cfg.epochs
            checkpoint_now()

    if test_items is not None and _labelled(test_items):
        accelerator.wait_for_everyone()
        state.test = evaluate_checkpoint(str(output_dir / BEST_DIR), recipe, "test").metrics
        if show:
            write_json(output_dir / METRICS_FILE, _metrics_summary(recipe, metric, state))
        checkpoint_now()
    accelerator.wait_for_everyone()
    return RunResult(output_dir, state.best_epoch, state.best_eval, state.history, state.test)


def _stop_requested(stop: _StopRequest, accelerator: Accelerator) -> bool:
    """Whether any process got SIGINT/SIGTERM (all processes must checkpoint together)."""
    flag = stop.signum is not None
    if accelerator.num_processes == 1:
        return flag
    return bool(accelerator.reduce(torch.tensor(float(flag), device=accelerator.device), "max").item())


def _metrics_summary(recipe: Recipe, metric: str, state: TrainingState) -> dict[str, Any]:
    summary = {"best_epoch": state.best_epoch, "metric": metric, "eval": state.best_eval, "task": recipe.task,
               "model": recipe.model}
    if state.test is not None:
        summary["test"] = state.test
    return summary


def _labelled(items: list) -> bool:
    first = items[0] if items else None
    # Examples carry a label, tagged sentences tags, translation pairs a target.
    return first is not None and getattr(first, "label", getattr(first, "tags", getattr(first, "target", None))) \
        is not None



def read_history(output_dir: Path, keys: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """A run's ``history.jsonl`` rows, one per finished epoch, each holding ``keys``.

    Raises UserError naming the file when it is missing, empty or malformed, or a row lacks a key.
    """
    path = output_dir / HISTORY_FILE
    if not path.is_file():
        raise UserError(f"{output_dir} is not a run directory: it has no {HISTORY_FILE} (addrop train writes one "
                        "per epoch)")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise UserError(f"{path} line {number} is not JSON: {error.msg}") from None
        missing = [key for key in keys if not isinstance(row, dict) or key not in row]
        if missing:
            raise UserError(f"{path} line {number} has no {', '.join(missing)}")
        rows.append(row)
    if not rows:
        raise UserError(f"{path} is empty: the run has not finished an epoch yet")
    return rows
