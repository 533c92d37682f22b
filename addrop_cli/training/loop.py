"""The one training loop (Accelerate): plain fine-tuning and cross-tuned AD-DROP through the same steps.

:func:`train` is four steps, each a function below: :func:`setup` (data, model, optimizer, ``prepare``,
resume), :func:`train_epoch`, :func:`end_epoch` (history, best checkpoint, metrics, early stopping) and
:func:`score_test` (the best checkpoint on the test split, through the same Accelerator).
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, set_seed
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from torch.utils.data import BatchSampler, DataLoader, RandomSampler
from transformers import get_linear_schedule_with_warmup

from addrop_cli import locks
from addrop_cli.core.methods.base import Regularizer
from addrop_cli.core.methods.registry import make_regularizer, method_spec
from addrop_cli.core.model_setup import build_no_kv_cache
from addrop_cli.core.settings import CLASSIFICATION, FT_PHASE, epoch_phase
from addrop_cli.errors import UserError, WriteFailed, first_line
from addrop_cli.interrupts import Interrupted, StopRequest, signal_name
from addrop_cli.outputs import check_writable_folder, recover_dir, write_dir, write_json, write_jsonl, write_text
from addrop_cli.recipe import Recipe, dump_yaml
from addrop_cli.tasks.metrics import validate_metric
from addrop_cli.tasks.models import ensure_pad_token, load_tokenizer, max_model_length
from addrop_cli.tasks.pipeline_base import EvalResult
from addrop_cli.tasks.pipelines import Pipeline, pipeline_for
from addrop_cli.training.batching import EncodedDataset, LengthGroupedBatchSampler
from addrop_cli.training.checkpoints import (
    TrainingState,
    load_checkpoint,
    recover_checkpoints,
    save_checkpoint,
    update_state,
)
from addrop_cli.training.disk_space import DiskPlan, checkpoints_per_run, plan_disk
from addrop_cli.training.evaluation import build_accelerator, eval_loader, labelled_split
from addrop_cli.training.lora import apply_lora, save_lora_model
from addrop_cli.training.model_card import CARD_FILE, build_card, check_hub_access, push_to_hub
from addrop_cli.training.one_class import ONE_CLASS_SHARE, majority_share
from addrop_cli.training.process_group import ending_process_group
from addrop_cli.training.run_dir import (
    BEST_DIR,
    HISTORY_FILE,
    METRICS_FILE,
    RECIPE_FILE,
    SetAside,
    check_output_dir,
    latest_checkpoint,
    package_versions,
    read_history,
    read_metrics,
    recover_set_aside,
    write_progress,
)
from addrop_cli.training.tracking import finish_trackers, resolve_trackers, start_trackers


@dataclass
class RunResult:
    output_dir: Path
    best_epoch: int
    best_eval: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)
    test: dict[str, float] | None = None
    hub_url: str | None = None
    main_process: bool = True  # False in the other processes of a multi-process run: they print no summary


class TrainingInterrupted(Interrupted):
    """SIGINT or SIGTERM arrived: the current step finished and a checkpoint was written."""

    def __init__(self, signum: int, checkpoint: Path):
        self.checkpoint = checkpoint
        super().__init__(signum, f"interrupted by {signal_name(signum)}; checkpoint saved in {checkpoint}")


class TrainingDiverged(Exception):
    """The training loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class Run:
    """Everything :func:`setup` prepares, shared by the steps of the loop."""

    recipe: Recipe
    pipeline: Pipeline
    metric: str
    output_dir: Path
    accelerator: Accelerator
    tokenizer: Any
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    batches: Any  # the training batch sampler, re-seeded every epoch
    train_loader: DataLoader
    eval_loader: DataLoader
    test_loader: DataLoader | None
    addrop: Regularizer | None  # the regularized epochs' method (addrop.method), None for plain fine-tuning
    recipe_text: str
    state: TrainingState
    console: Console
    set_aside: SetAside | None = None  # --overwrite: the previous run, until this run's first checkpoint
    disk: DiskPlan | None = None  # what the run will write, against the output folder's free space
    checkpointed_at: tuple[int, int] | None = None  # (epoch, step in it) of the last checkpoint this process wrote

    @property
    def show(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def complete(self) -> bool:
        """Every epoch trained (or stopped early) and, when there is a test split, scored on it."""
        return self.state.finished and (self.test_loader is None or self.state.test is not None)

    def result(self) -> RunResult:
        state = self.state
        return RunResult(self.output_dir, state.best_epoch, state.best_eval, state.history, state.test,
                         main_process=self.show)


def train(
    recipe: Recipe,
    *,
    overwrite: bool = False,
    resume: bool = False,
    trust_remote_code: bool = False,
    console: Console | None = None,
    check_space: bool = True,
) -> RunResult:
    """Fine-tune ``recipe.model`` on ``recipe.task``; AD-DROP per the cross-tuning schedule.

    Writes ``recipe.yaml``, ``history.jsonl``, ``metrics.json``, ``best/`` and ``checkpoints/`` to
    ``recipe.train.output_dir``. A directory holding a checkpoint of the same run is resumed exactly where it
    stopped. Raises :class:`TrainingInterrupted` on SIGINT/SIGTERM (after checkpointing),
    :class:`TrainingDiverged` on a non-finite loss, a UserError before training when ``check_space`` and the output
    folder lacks the room the run's checkpoints need (:mod:`.disk_space`), and
    :class:`~addrop_cli.errors.WriteFailed` when the file system refuses a write (the last checkpoint is whole).
    """
    with contextlib.ExitStack() as held:  # the output directory's lock while the run goes on; then the teardown
        held.enter_context(ending_process_group())  # entered first, so it ends last: once the run is unreachable
        try:
            return _train(recipe, overwrite, resume, trust_remote_code, console or Console(stderr=True), held,
                          check_space)
        except WriteFailed as failure:
            raise failure.advised(_after_write_failure(Path(recipe.train.output_dir))) from failure


def _after_write_failure(output_dir: Path) -> str:
    """What to do once a write failed: the last checkpoint is whole, and the same command goes on from it."""
    last = latest_checkpoint(output_dir)
    if last is None:
        return "no checkpoint was written yet; once there is room, run the same command again"
    return (f"the last complete checkpoint, {last}, is intact: once there is room, run the same command again "
            "(or add --resume) to go on from it")


def _train(recipe: Recipe, overwrite: bool, resume: bool, trust_remote_code: bool, console: Console,
           held: contextlib.ExitStack, check_space: bool) -> RunResult:
    """:func:`train`'s body. The run lives only in this frame: unreachable once it returns or its exception's
    frames are cleared, and collected by :func:`~addrop_cli.training.process_group.end_process_group`."""
    run = setup(recipe, overwrite=overwrite, resume=resume, trust_remote_code=trust_remote_code, console=console,
                held=held, check_space=check_space)
    if run.complete:
        if run.show:
            run.console.print(f"run in {run.output_dir} is already complete (best epoch {run.state.best_epoch}); "
                              "to train it again pass --overwrite, or choose another --output-dir",
                              highlight=False, soft_wrap=True)
        return _published(run)  # a push that failed (or was added since) happens now
    start_trackers(run.accelerator, recipe, run.output_dir.name)  # not for a run that has nothing to log
    held.callback(finish_trackers, run.accelerator.trackers)
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TextColumn("eta"),
                        TimeRemainingColumn(), console=run.console, disable=not run.show, transient=True)
    with progress, StopRequest() as stop:
        while not run.state.finished:
            seconds = train_epoch(run, progress, stop)
            end_epoch(run, seconds, progress)
            _stop_if_requested(run, stop)  # a signal during evaluation or the epoch's checkpoint
        if run.test_loader is not None and run.state.test is None:  # also when a stop came before it
            score_test(run, progress)
            _stop_if_requested(run, stop)
    run.accelerator.wait_for_everyone()
    return _published(run)


def _published(run: Run) -> RunResult:
    """The run's result, after uploading ``best/`` when ``train.push_to_hub`` names a repository."""
    result, cfg = run.result(), run.recipe.train
    if cfg.push_to_hub and run.show:
        try:
            result.hub_url = push_to_hub(run.output_dir / BEST_DIR, cfg.push_to_hub, cfg.hub_private)
        except Exception as error:  # network, permissions: the run itself is complete and kept
            raise UserError(f"--push-to-hub {cfg.push_to_hub}: training finished but the upload failed "
                            f"({first_line(error)}); run the same command again to retry the upload") from None
    return result


# ---------------------------------------------------------------------------------------------- setup


def setup(recipe: Recipe, *, overwrite: bool, resume: bool, trust_remote_code: bool, console: Console,
          held: contextlib.ExitStack, check_space: bool = True) -> Run:
    """Data, model, optimizer and schedule, prepared by Accelerate; the saved state when resuming.

    The output directory is left alone until every input has been checked and the data, tokenizer and model
    have loaded, so the error a user sees is the first thing that is wrong and a failed start changes nothing
    there; then :func:`_claim_output_dir` takes it.
    """
    cfg = recipe.train
    check_writable_folder(Path(cfg.output_dir), "train.output_dir (--output-dir)")
    pipeline = pipeline_for(recipe)
    metric = validate_metric(cfg.metric or pipeline.default_metric, pipeline.task)
    if cfg.push_to_hub:  # hours of training must not end in a push that could never happen
        check_hub_access(cfg.push_to_hub)
    accelerator = build_accelerator(cfg, resolve_trackers(cfg.report_to))
    train_items, eval_items = pipeline.read(recipe, "train"), pipeline.read(recipe, "validation")
    test_items = labelled_split(pipeline, recipe, "test")
    set_seed(cfg.seed)
    tokenizer = load_tokenizer(recipe.model, trust_remote_code)
    model, notices = _load_model(recipe, pipeline, tokenizer, trust_remote_code)
    notices += _evaluation_notices(recipe)
    _check_max_length(recipe, model, tokenizer)
    train_set = EncodedDataset(pipeline.encode(train_items, tokenizer, recipe))
    collate = pipeline.collator(tokenizer)
    batches = _train_batches(train_set, recipe, cfg.batch_size * accelerator.num_processes)
    # The loader gets its own generator so that creating an iterator never draws from the global RNG,
    # which dropout and AD-DROP's masks use (a resumed run must see the same draws).
    train_loader = DataLoader(train_set, batch_sampler=batches, collate_fn=collate, generator=torch.Generator())
    eval_size = cfg.eval_batch_size * accelerator.num_processes
    loaders = [eval_loader(pipeline.encode(items, tokenizer, recipe), eval_size, collate)
               for items in (eval_items, test_items) if items is not None]
    optimizer = _optimizer(model, recipe)
    total_updates = math.ceil(len(train_loader) / cfg.gradient_accumulation_steps) * cfg.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total_updates), total_updates)
    model, optimizer, train_loader, scheduler, *loaders = accelerator.prepare(
        model, optimizer, train_loader, scheduler, *loaders
    )
    addrop = make_regularizer(model, recipe.addrop, pipeline.task_type, settings=recipe.method_settings(),
                              special_ids=tokenizer.all_special_ids) if recipe.addrop.enabled else None
    recipe_text = dump_yaml(recipe.to_dict(), header="# Resolved by addrop; "
                            + ", ".join(f"{k} {v}" for k, v in package_versions().items()) + "\n")
    run = Run(recipe, pipeline, metric, Path(cfg.output_dir), accelerator, tokenizer, model, optimizer, scheduler,
              batches, train_loader, loaders[0], loaders[1] if len(loaders) > 1 else None, addrop, recipe_text,
              TrainingState(), console)
    run.disk = _plan_disk(run, overwrite, check_space)
    checkpoint = _claim_output_dir(run, overwrite, resume, held, notices)
    if run.show:
        _print_header(run, {"train": train_items, "validation": eval_items, "test": test_items}, notices)
    _restore_state(run, checkpoint, overwrite)
    return run


def _plan_disk(run: Run, overwrite: bool, check_space: bool) -> DiskPlan:
    """The run's disk plan; a UserError, before anything is written, when ``check_space`` and it does not fit (a
    finished run writes nothing more and is not checked)."""
    cfg = run.recipe.train
    updates = math.ceil(len(run.train_loader) / cfg.gradient_accumulation_steps)
    plan = plan_disk(run.accelerator.unwrap_model(run.model), run.tokenizer, run.output_dir, cfg.save_total_limit,
                     checkpoints_per_run(cfg.epochs, updates, cfg.save_steps, cfg.save_every), reuse=not overwrite)
    refuse = check_space and not plan.fits and (overwrite or finished_run(run.output_dir) is None)
    if broadcast_object_list([refuse])[0]:  # the main process's reading decides for all (free space moves)
        raise UserError(plan.refusal())
    return plan


def _claim_output_dir(run: Run, overwrite: bool, resume: bool, held: contextlib.ExitStack,
                      notices: list[str]) -> Path | None:
    """Take the output directory: its lock (main process, into ``held``: a second live ``addrop train`` there is
    refused), an interrupted ``--overwrite`` undone, the check against this run, and under ``--overwrite`` the
    previous run set aside until this one's first checkpoint. Returns the checkpoint to resume from, if any."""
    accelerator, output_dir = run.accelerator, run.output_dir
    if accelerator.is_main_process:
        held.enter_context(locks.held(output_dir / locks.TRAIN_LOCK, "training"))
        restored = recover_set_aside(output_dir)
        notices += [restored] if restored else []
        recover_checkpoints(output_dir)  # what a process killed mid-write left
        recover_dir(output_dir / BEST_DIR)
    accelerator.wait_for_everyone()
    checkpoint = check_output_dir(output_dir, run.recipe, overwrite, resume)
    if overwrite and accelerator.is_main_process:
        run.set_aside = held.enter_context(SetAside(output_dir))
    accelerator.wait_for_everyone()
    return checkpoint


def _restore_state(run: Run, checkpoint: Path | None, overwrite: bool) -> None:
    """The loop position: from the checkpoint, from a finished run's metrics, or a new run's recipe.yaml."""
    finished = None if checkpoint is not None or overwrite else finished_run(run.output_dir)
    if finished is not None:  # a sweep deletes a finished trial's checkpoints; its metrics say it is complete
        run.state = finished
    elif checkpoint is not None:
        run.state = load_checkpoint(run.accelerator, checkpoint)
        run.checkpointed_at = (run.state.epoch, run.state.step_in_epoch)
        if run.show and not run.complete:
            run.console.print(f"resuming from {checkpoint} (epoch {run.state.epoch}, step {run.state.step_in_epoch})")
    elif run.show:
        write_text(run.output_dir / RECIPE_FILE, run.recipe_text)


def finished_run(output_dir: Path) -> TrainingState | None:
    """The state of a complete run of this recipe whose checkpoints are gone, from ``metrics.json``."""
    if not (output_dir / METRICS_FILE).is_file():
        return None
    metrics = read_metrics(output_dir)
    if not metrics.get("finished"):
        return None
    return TrainingState(finished=True, best_epoch=metrics["best_epoch"], best_eval=metrics["eval"],
                         test=metrics.get("test"), history=read_history(output_dir))


def _load_model(recipe: Recipe, pipeline: Pipeline, tokenizer, trust_remote_code: bool
                ) -> tuple[torch.nn.Module, list[str]]:
    """The task model in ``train.model_dtype``, with a pad token, no KV cache, activation checkpointing and
    LoRA adapters as the recipe asks; and the notices to print about what was changed."""
    model = pipeline.load_model(recipe.model, trust_remote_code, recipe.train.model_dtype)
    notice = ensure_pad_token(model, tokenizer)
    build_no_kv_cache(model)
    if recipe.train.gradient_checkpointing:
        try:
            model.activation_checkpointing_enable()  # non-reentrant, the default
        except ValueError as error:
            raise UserError(f"train.gradient_checkpointing=true is invalid for model '{recipe.model}': "
                            f"{first_line(error)}") from None
    notices = [notice] if notice else []
    if recipe.lora.enabled:
        model = apply_lora(model, recipe.lora, pipeline.task_type)
    half = recipe.train.model_dtype in ("bfloat16", "float16")
    if half and recipe.lora.enabled and recipe.train.mixed_precision != "no":
        for parameter in model.parameters():  # fp32 master weights for what trains; autocast runs it in half
            if parameter.requires_grad:
                parameter.data = parameter.data.float()
    elif half:
        notices.append(f"the trained weights are {recipe.train.model_dtype} without float32 copies; for full "
                       "fine-tuning prefer float32 weights with --mixed-precision bf16")
    return model, notices


def _evaluation_notices(recipe: Recipe) -> list[str]:
    """A warning where an even ``train.eval_every`` meets cross-tuning (odd epochs plain, even ones regularized):
    only the regularized epochs and the last would be evaluated, so best/ could never be a plain epoch."""
    cfg, addrop = recipe.train, recipe.addrop
    if not (addrop.enabled and addrop.cross_tuning and cfg.eval_every % 2 == 0 and cfg.epochs > cfg.eval_every):
        return []
    return [f"train.eval_every={cfg.eval_every} with cross-tuning evaluates only {addrop.method} epochs (and the "
            f"last), so best/ is chosen among those; an odd value evaluates plain and {addrop.method} epochs alike"]


def _print_header(run: Run, splits: dict[str, list | None], notices: list[str]) -> None:
    """What is about to run: model, task, data, device, precision, output folder, and model notices."""
    model, accelerator, recipe = run.accelerator.unwrap_model(run.model), run.accelerator, run.recipe
    parameters = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    sizes = ", ".join(f"{name} {len(items)}" for name, items in splits.items() if items is not None)
    labels = run.pipeline.label_counts(splits["train"])
    mode = "plain fine-tuning" if run.addrop is None else \
        method_spec(recipe.addrop.method).header(recipe.method_settings(), recipe.addrop.cross_tuning)
    lines = [f"model {recipe.model} ({type(model).__name__}, {parameters / 1e6:.1f}M parameters"
             + (f", {trainable / 1e6:.1f}M trainable" if trainable != parameters else "") + ")",
             f"task {recipe.task}: {sizes} examples"
             + (" | train labels " + ", ".join(f"{k} {v}" for k, v in labels.items()) if labels else ""),
             f"{mode} | {recipe.train.epochs} epochs, batch {recipe.train.batch_size}, lr {recipe.train.lr:g}",
             f"device {accelerator.device} x {accelerator.num_processes} process(es), precision "
             f"{accelerator.mixed_precision}, weights {next(model.parameters()).dtype} | output {run.output_dir}"]
    if recipe.lora.enabled:
        lines.append(f"LoRA r {recipe.lora.r} alpha {recipe.lora.alpha:g} dropout {recipe.lora.dropout:g} on "
                     f"{', '.join(sorted(model.peft_config['default'].target_modules))}")
    lines.append(run.disk.summary())
    lines += [f"note: {notice}" for notice in notices]
    for line in lines:
        run.console.print(line, highlight=False, soft_wrap=True)


def _check_max_length(recipe: Recipe, model: torch.nn.Module, tokenizer) -> None:
    limit = max_model_length(model, tokenizer)
    if limit is not None and recipe.data.max_length > limit:
        raise UserError(f"data.max_length={recipe.data.max_length} exceeds what model '{recipe.model}' accepts "
                        f"({limit} tokens); use --max-length {limit} or less")


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


# ---------------------------------------------------------------------------------------------- epochs


def train_epoch(run: Run, progress: Progress, stop: StopRequest) -> float:
    """The rest of the epoch in progress (all of it, or from where a resumed run stopped); returns its
    training seconds. Checkpoints every ``save_steps`` updates, and on a stop request before raising."""
    cfg, state, accelerator = run.recipe.train, run.state, run.accelerator
    epoch = state.epoch
    phase = epoch_phase(epoch, run.recipe.addrop)
    if isinstance(run.batches, LengthGroupedBatchSampler):
        run.batches.set_epoch(epoch)
    else:
        run.batches.sampler.generator.manual_seed(cfg.seed + epoch)
    steps = len(run.train_loader)
    bar = progress.add_task(f"epoch {epoch}/{cfg.epochs} {phase}", total=steps, completed=state.step_in_epoch,
                            status="")
    progress.refresh()
    run.model.train()
    loss_sum = torch.tensor(state.loss_sum, device=accelerator.device)
    resumed_at, started = state.step_in_epoch, time.perf_counter() - state.seconds
    loader = accelerator.skip_first_batches(run.train_loader, resumed_at) if resumed_at else run.train_loader
    # Accelerate re-seeds the batch sampler with the loader's own iteration count when iterating (a resumed
    # run's fresh loader would count from 0), so that count is set to the epoch too.
    loader.set_epoch(epoch)
    for step, batch in enumerate(loader, start=resumed_at + 1):
        loss_sum += _train_step(run, batch, phase)
        state.samples += batch["input_ids"].shape[0] * accelerator.num_processes
        state.step_in_epoch = step
        logging = step % cfg.log_every == 0 or step == steps
        saving = accelerator.sync_gradients and cfg.save_steps and state.global_step % cfg.save_steps == 0
        stopping = _stop_requested(stop, accelerator)
        if logging or saving or stopping:
            # .item() only here: no host synchronisation inside the step.
            state.loss_sum, state.seconds = loss_sum.item(), time.perf_counter() - started
            if not math.isfinite(state.loss_sum):
                _checkpoint(run)  # raises TrainingDiverged
            if run.show:
                progress.update(bar, status=f"loss {state.loss_sum / step:.4f} | "
                                f"{state.samples / state.seconds:.1f} samples/s")
                accelerator.log({"train/loss": state.loss_sum / step, "train/samples_per_second":
                                 state.samples / state.seconds, "train/learning_rate": run.scheduler.get_last_lr()[0]},
                                step=state.global_step)
                write_progress(run.output_dir, {"epoch": epoch, "epochs": cfg.epochs, "step": step, "steps": steps})
        progress.update(bar, completed=step)
        if (saving and step < steps) or stopping:  # the epoch's end checkpoints in end_epoch
            saved = _checkpoint(run)
            if stopping:
                raise TrainingInterrupted(stop.signum or signal.SIGTERM, saved)
    state.loss_sum = accelerator.gather(loss_sum[None]).mean().item()
    progress.remove_task(bar)
    return time.perf_counter() - started


def _train_step(run: Run, batch: dict[str, torch.Tensor], phase: str) -> torch.Tensor:
    """One forward and backward (the AD-DROP loss in AD-DROP epochs), and an update when accumulation syncs."""
    accelerator, cfg = run.accelerator, run.recipe.train
    with accelerator.accumulate(run.model):
        loss = run.model(**batch).loss if phase == FT_PHASE else run.addrop.loss(batch)
        accelerator.backward(loss)
        if accelerator.sync_gradients and cfg.max_grad_norm > 0:
            accelerator.clip_grad_norm_(run.model.parameters(), cfg.max_grad_norm)
        run.optimizer.step()
        run.scheduler.step()
        run.optimizer.zero_grad()
    if accelerator.sync_gradients:
        run.state.global_step += 1
    return loss.detach()


def end_epoch(run: Run, seconds: float, progress: Progress) -> None:
    """Record the epoch in ``history.jsonl``; evaluate it when due (every ``train.eval_every`` epochs and the last),
    keeping the best checkpoint and deciding on early stopping; checkpoint the loop at the epoch boundary when due
    (every ``train.save_every`` epochs, and the run's end)."""
    state, cfg = run.state, run.recipe.train
    epoch = state.epoch
    phase = epoch_phase(epoch, run.recipe.addrop)
    record = {"epoch": epoch, "phase": phase, "train_loss": state.loss_sum / max(len(run.train_loader), 1)}
    due = epoch % cfg.eval_every == 0 or epoch == cfg.epochs
    result = _evaluate_epoch(run, progress) if due else None
    if result is not None:
        record.update({"eval": result.metrics, "eval_loss": result.loss, "eval_predictions": result.prediction_counts})
    state.history.append({**record, "seconds": round(seconds, 3),
                          "train_samples_per_second": round(state.samples / seconds, 3)})
    _log_epoch(run, result, phase)
    improved = result is not None and state.best_epoch == epoch
    early_stop = result is not None and cfg.patience is not None and state.stale_evaluations >= cfg.patience
    state.epoch, state.step_in_epoch, state.loss_sum, state.samples, state.seconds = epoch + 1, 0, 0.0, 0, 0.0
    state.finished = early_stop or state.epoch > cfg.epochs
    if run.show:
        write_jsonl(run.output_dir / HISTORY_FILE, state.history)
        if improved:
            _save_best(run)
        write_json(run.output_dir / METRICS_FILE, _metrics_summary(run))
        _print_epoch(run, record, result, seconds, improved)
        if early_stop:
            run.console.print(f"early stopping: no {run.metric} gain in {state.stale_evaluations} evaluations")
    if epoch % cfg.save_every == 0 or state.finished:
        _checkpoint(run)


def _evaluate_epoch(run: Run, progress: Progress) -> EvalResult:
    """Evaluate the model on the evaluation split; a new best score makes this epoch the best one, any other
    counts towards ``train.patience``."""
    state = run.state
    result = run.pipeline.evaluate(run.model, _tracked(run.eval_loader, progress, "evaluating"), run.accelerator,
                                   run.tokenizer)
    if result.metrics[run.metric] > state.best_value:
        state.best_value, state.best_epoch, state.best_eval = result.metrics[run.metric], state.epoch, result.metrics
        state.stale_evaluations = 0
    else:
        state.stale_evaluations += 1
    return result


def _print_epoch(run: Run, record: dict[str, Any], result: EvalResult | None, seconds: float,
                 improved: bool) -> None:
    """The epoch's line (and a one-class warning) on the console."""
    shown = " | eval " + ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items()) if result is not None else ""
    run.console.print(f"epoch {record['epoch']} ({record['phase']}) train loss {record['train_loss']:.4f}{shown}"
                      f"{' (best)' if improved else ''} | {seconds:.1f}s", highlight=False, soft_wrap=True)
    warning = None
    if result is not None and run.pipeline.task_type == CLASSIFICATION:
        warning = one_class_warning(result.prediction_counts)
    if warning:
        run.console.print(f"  warning: {warning}", highlight=False, soft_wrap=True)


def _log_epoch(run: Run, result: EvalResult | None, phase: str) -> None:
    """The epoch's evaluation (``result``, None when the epoch was not evaluated) and AD-DROP signals to the
    trackers: the share of attention positions dropped (AD-DROP epochs) and the share of evaluation predictions in
    the most-predicted class."""
    counts = run.addrop.take_drop_counts() if run.addrop is not None else None
    values = {"epoch": run.state.epoch, "addrop_epoch": int(phase != FT_PHASE)}
    if result is not None:
        values.update({f"eval/{name}": value for name, value in result.metrics.items()})
        values["eval/loss"] = result.loss
        if run.pipeline.task_type == CLASSIFICATION and result.prediction_counts:
            values["eval/majority_class_share"] = majority_share(result.prediction_counts)
    if counts is not None:
        dropped, seen = run.accelerator.reduce(counts, "sum").tolist()  # every process ran AD-DROP steps
        values["addrop/dropped_share"] = dropped / seen if seen else 0.0
    run.accelerator.log(values, step=run.state.global_step)


def score_test(run: Run, progress: Progress) -> None:
    """Score the best checkpoint once on the test split, through the run's Accelerator and test loader."""
    accelerator = run.accelerator
    accelerator.wait_for_everyone()
    best = accelerator.prepare(run.pipeline.load_model(str(run.output_dir / BEST_DIR),
                                                       dtype=run.recipe.train.model_dtype))
    loader = _tracked(run.test_loader, progress, "testing")
    run.state.test = run.pipeline.evaluate(best, loader, accelerator, run.tokenizer).metrics
    if run.show:
        write_json(run.output_dir / METRICS_FILE, _metrics_summary(run))
        write_text(run.output_dir / BEST_DIR / CARD_FILE, _card_text(run))  # now with the test scores
    update_state(accelerator, latest_checkpoint(run.output_dir), run.state)


# ------------------------------------------------------------------------------------------- helpers


def _checkpoint(run: Run) -> Path:
    """Save the resumable state, or raise :class:`TrainingDiverged` if the epoch's loss is not finite."""
    state = run.state
    if not math.isfinite(state.loss_sum):
        last = latest_checkpoint(run.output_dir)
        raise TrainingDiverged(
            f"the training loss became non-finite at epoch {state.epoch}, step {state.step_in_epoch} "
            f"(lower --lr or use --mixed-precision no); last good checkpoint: "
            + (str(last) if last else "none was written before it")
        )
    saved = save_checkpoint(run.accelerator, run.output_dir, state, run.recipe.train.save_total_limit)
    run.checkpointed_at = (state.epoch, state.step_in_epoch)
    if run.set_aside is not None:
        run.set_aside.discard()  # this run has started: the run it replaces goes
    return saved


def _save_best(run: Run) -> None:
    model = run.accelerator.unwrap_model(run.model)

    def fill(tmp: Path) -> None:
        if run.recipe.lora.enabled:
            save_lora_model(model, tmp)
        else:
            model.save_pretrained(tmp, safe_serialization=True)
        run.tokenizer.save_pretrained(tmp)
        (tmp / RECIPE_FILE).write_text(run.recipe_text, encoding="utf-8")
        (tmp / CARD_FILE).write_text(_card_text(run), encoding="utf-8")

    write_dir(run.output_dir / BEST_DIR, fill)


def _card_text(run: Run) -> str:
    state = run.state
    return str(build_card(run.recipe, run.pipeline.task, run.pipeline.task_type, state.history, state.best_epoch,
                          state.best_eval, state.test, run.output_dir.name))


def one_class_warning(prediction_counts: dict[str, int], share: float = ONE_CLASS_SHARE) -> str | None:
    """A warning when at least ``share`` of the predictions fall in one class (the drift AD-DROP epochs can
    cause, docs/drift.md), else None."""
    total = sum(prediction_counts.values())
    if total == 0 or len(prediction_counts) < 2:
        return None
    label, count = max(prediction_counts.items(), key=lambda item: item[1])
    if count < share * total:
        return None
    return f"{count / total:.0%} of the {total} evaluation predictions are '{label}': the model may predict one class"


def _tracked(loader: DataLoader, progress: Progress, description: str):
    """Iterate ``loader`` while a progress bar counts its batches."""
    bar = progress.add_task(description, total=len(loader), status="")
    progress.refresh()  # shown at once, however short the evaluation
    try:
        for batch in loader:
            yield batch
            progress.advance(bar)
    finally:
        progress.remove_task(bar)


def _stop_if_requested(run: Run, stop: StopRequest) -> None:
    """Raise :class:`TrainingInterrupted` if a signal came after the last step checked for one, checkpointing the
    epoch first where ``train.save_every`` skipped it (the test scores go into the last checkpoint)."""
    if _stop_requested(stop, run.accelerator):
        position = (run.state.epoch, run.state.step_in_epoch)
        saved = _checkpoint(run) if run.checkpointed_at != position else latest_checkpoint(run.output_dir)
        raise TrainingInterrupted(stop.signum or signal.SIGTERM, saved)


def _stop_requested(stop: StopRequest, accelerator: Accelerator) -> bool:
    """Whether any process got SIGINT/SIGTERM (all processes must checkpoint together)."""
    if accelerator.num_processes == 1:
        return stop.requested
    flag = torch.tensor(float(stop.requested), device=accelerator.device)
    return bool(accelerator.reduce(flag, "max").item())


def _metrics_summary(run: Run) -> dict[str, Any]:
    state = run.state
    summary = {"finished": run.complete, "best_epoch": state.best_epoch, "metric": run.metric, "eval": state.best_eval,
               "task": run.recipe.task, "model": run.recipe.model}
    if state.test is not None:
        summary["test"] = state.test
    return summary
