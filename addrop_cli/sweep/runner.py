"""Running a sweep's trials: in this process, or as ``addrop train`` processes (one GPU each); one result
row per finished trial, written atomically to ``results.jsonl``."""

from __future__ import annotations

import dataclasses
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from addrop_cli.errors import UserError
from addrop_cli.interrupts import Interrupted, StopRequest, signal_name
from addrop_cli.outputs import write_jsonl, write_text
from addrop_cli.recipe import dump_yaml, load_yaml
from addrop_cli.sweep.plan import LOG_FILE, RESULTS_FILE, Trial, current_results, read_results
from addrop_cli.training.run_dir import (
    CHECKPOINTS_DIR,
    latest_checkpoint,
    read_history,
    read_metrics,
    read_progress,
    recipe_differences,
    recipe_path,
)


def _result_row(trial: Trial, seconds: float, status: str = "ok", message: str | None = None) -> dict[str, Any]:
    directory = Path(trial.recipe.train.output_dir)
    row = {**trial.row(), "digest": trial.digest, "status": status, "seconds": round(seconds, 1)}
    if status == "ok":
        metrics = read_metrics(directory)
        history = read_history(directory, ("seconds",))
        row.update(metric=metrics["metric"], best_epoch=metrics["best_epoch"], eval=metrics["eval"],
                   test=metrics.get("test"), train_seconds=round(sum(h["seconds"] for h in history), 1))
    else:
        row["message"] = message
    return row


# ------------------------------------------------------------------------------------------- running


@dataclass
class SweepProgress:
    """What the live display reads: finished rows, running trials (id -> start time and directory), the total,
    and notes such as "resuming trial X from step-N"."""

    total: int
    workers: int = 1
    finished: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    running: dict[str, float] = dataclasses.field(default_factory=dict)
    directories: dict[str, Path] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)
    skipped: int = 0
    resumed: dict[str, float] = dataclasses.field(default_factory=dict)  # trial -> share done when it resumed

    def start(self, trial: Trial) -> None:
        directory = Path(trial.recipe.train.output_dir)
        self.running[trial.id], self.directories[trial.id] = time.time(), directory
        checkpoint = latest_checkpoint(directory)
        if checkpoint is not None:
            self.notes.append(f"resuming {trial.id} from {checkpoint.name}")
            self.resumed[trial.id] = _fraction(read_progress(directory) or {})

    def status(self, now: float | None = None) -> str:
        """``3/81 finished | running T epoch 2/3 step 50/125 (1.4 min) | eta 1 h 12 min``."""
        now = time.time() if now is None else now
        parts = [f"{len(self.finished)}/{self.total} finished"]
        remaining, whole = [], []  # per running trial: seconds left, and seconds a whole trial takes at its pace
        for name, started in self.running.items():
            where = read_progress(self.directories[name]) or {}
            elapsed = now - started
            done = _fraction(where) - self.resumed.get(name, 0.0)  # the share done in this sitting
            position = f" epoch {where['epoch']}/{where['epochs']} step {where['step']}/{where['steps']}" \
                if where else ""
            parts.append(f"running {name}{position} ({elapsed / 60:.1f} min)")
            if done > 0:
                remaining.append(elapsed * (1 - _fraction(where)) / done)
                whole.append(elapsed / done)
        # Trials resumed in this sitting ran only part of their work here: they say nothing of a whole trial.
        this_run = [row["seconds"] for row in self.finished[self.skipped:]
                    if "seconds" in row and row["trial"] not in self.resumed]
        typical = statistics.fmean(this_run) if this_run else (statistics.fmean(whole) if whole else None)
        waiting = self.total - len(self.finished) - len(self.running)
        if typical is not None and (remaining or not self.running):
            spread = (sum(remaining) + waiting * typical) / max(self.workers, 1)
            parts.append(f"eta {_duration(max([spread, *remaining]))}")
        return " | ".join(parts)


def _fraction(where: dict[str, Any]) -> float:
    """The share of a trial's steps done, from its progress.json."""
    if not where:
        return 0.0
    return ((where["epoch"] - 1) * where["steps"] + where["step"]) / max(where["epochs"] * where["steps"], 1)


def _duration(seconds: float) -> str:
    minutes = max(round(seconds / 60), 0)
    return f"{minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"{minutes} min"


class SweepInterrupted(Interrupted):
    """SIGINT/SIGTERM: running trials checkpointed; re-running the command resumes."""

    def __init__(self, signum: int):
        super().__init__(signum, f"sweep interrupted by {signal_name(signum)}")


def visible_devices() -> list[str]:
    """GPU ids trials are spread over (round robin), honouring CUDA_VISIBLE_DEVICES; empty without GPUs."""
    import torch

    if not torch.cuda.is_available():
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed:
        return [device.strip() for device in listed.split(",") if device.strip()]
    return [str(index) for index in range(torch.cuda.device_count())]


def _prepare_trial_dir(trial: Trial, force: bool) -> None:
    """A trial directory holding a different recipe is cleared under --force (train would refuse it)."""
    directory = Path(trial.recipe.train.output_dir)
    saved = recipe_path(directory)
    if saved.is_file() and load_yaml(saved) != trial.recipe.to_dict():
        if not force:
            changed = "; ".join(recipe_differences(load_yaml(saved), trial.recipe.to_dict()))
            raise UserError(f"{directory} holds a different run than trial {trial.id} ({changed}); pass --force to "
                            "replace it")
        shutil.rmtree(directory)


def run_sweep(
    trials: list[Trial],
    directory: Path,
    *,
    workers: int = 1,
    force: bool = False,
    trust_remote_code: bool = False,
    keep_checkpoints: bool = False,
    on_change: Callable[[SweepProgress], None] | None = None,
) -> SweepProgress:
    """Run every trial without a result yet; results.jsonl is rewritten atomically after each one.

    A finished trial's resumable checkpoints are deleted once its row is written (its ``best/``, history and
    metrics stay), unless ``keep_checkpoints``; a diverged trial keeps them.

    One worker trains in this process; more start one ``addrop train`` process per trial (each pinned to one
    GPU, round robin, when GPUs are visible). Raises :class:`SweepInterrupted` on SIGINT/SIGTERM once the
    running trials have checkpointed, and UserError when a trial rejects its input.
    """
    rows = read_results(directory)
    done = current_results(trials, rows)
    # Rows of other grids (kept under --force) stay in the file; summaries only read this plan's rows.
    progress = SweepProgress(total=len(trials), workers=workers, finished=[done[t.id] for t in trials if t.id in done],
                             skipped=len(done))
    todo = [trial for trial in trials if trial.id not in done]
    for trial in todo:
        _prepare_trial_dir(trial, force)

    def record(row: dict[str, Any]) -> None:
        rows[:] = [r for r in rows if r["trial"] != row["trial"]] + [row]
        write_jsonl(directory / RESULTS_FILE, rows)
        if row["status"] == "ok" and not keep_checkpoints:
            shutil.rmtree(progress.directories[row["trial"]] / CHECKPOINTS_DIR, ignore_errors=True)
        progress.finished.append(row)
        progress.running.pop(row["trial"], None)
        if on_change:
            on_change(progress)

    if workers == 1:
        _run_in_process(todo, progress, record, trust_remote_code, on_change)
    else:
        _run_in_subprocesses(todo, progress, record, workers, trust_remote_code, on_change)
    return progress


def _run_in_process(todo, progress, record, trust_remote_code, on_change) -> None:
    from rich.console import Console

    from addrop_cli.training.loop import TrainingDiverged, TrainingInterrupted, train

    for trial in todo:
        directory = Path(trial.recipe.train.output_dir)
        directory.mkdir(parents=True, exist_ok=True)
        progress.start(trial)
        if on_change:
            on_change(progress)
        started = time.perf_counter()
        with open(directory / LOG_FILE, "a", encoding="utf-8") as log:
            try:
                train(trial.recipe, trust_remote_code=trust_remote_code, console=Console(file=log, width=120))
            except TrainingInterrupted as stop:
                raise SweepInterrupted(stop.signum) from None
            except TrainingDiverged as error:
                record(_result_row(trial, time.perf_counter() - started, "diverged", str(error)))
                continue
        record(_result_row(trial, time.perf_counter() - started))


def _run_in_subprocesses(todo, progress, record, workers, trust_remote_code, on_change) -> None:
    devices = visible_devices()
    pending = list(reversed(todo))
    running: dict[int, tuple[subprocess.Popen, Trial, Any, float]] = {}  # worker slot -> process

    def forward(signum: int) -> None:
        for process, *_ in running.values():
            if process.poll() is None:
                process.send_signal(signum)

    failure: str | None = None
    with StopRequest(on_signal=forward) as stop:
        while running or (pending and not stop.requested and failure is None):
            while pending and not stop.requested and failure is None and len(running) < workers:
                slot = min(set(range(workers)) - set(running))
                trial = pending.pop()
                running[slot] = (*_start_trial(trial, devices[slot % len(devices)] if devices else None,
                                               trust_remote_code), time.perf_counter())
                progress.start(trial)
                if on_change:
                    on_change(progress)
            time.sleep(0.2)
            for slot, (process, trial, log, started) in list(running.items()):
                code = process.poll()
                if code is None:
                    continue
                log.close()
                del running[slot]
                seconds = time.perf_counter() - started
                if code == 0:
                    record(_result_row(trial, seconds))
                elif code == 1:
                    record(_result_row(trial, seconds, "diverged", _last_line(trial)))
                else:
                    progress.running.pop(trial.id, None)
                    if not (code >= 128 and stop.requested):
                        failure = failure or f"trial {trial.id} failed (exit {code}): {_last_line(trial)}"
    if stop.requested:
        raise SweepInterrupted(stop.signum)
    if failure:
        raise UserError(failure)


def _start_trial(trial: Trial, device: str | None, trust_remote_code: bool) -> tuple[subprocess.Popen, Trial, Any]:
    directory = Path(trial.recipe.train.output_dir)
    saved = recipe_path(directory)
    if not saved.is_file():
        write_text(saved, dump_yaml(trial.recipe.to_dict()))
    command = [sys.executable, "-m", "addrop_cli", "train", "--recipe", str(saved)]
    if trust_remote_code:
        command.append("--trust-remote-code")
    env = dict(os.environ)
    if device is not None:
        env["CUDA_VISIBLE_DEVICES"] = device
    log = open(directory / LOG_FILE, "a", encoding="utf-8")  # noqa: SIM115 - closed when the process ends
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env), trial, log


def _last_line(trial: Trial) -> str:
    log = Path(trial.recipe.train.output_dir) / LOG_FILE
    lines = [line for line in log.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    return (lines[-1].strip() if lines else "no output") + f" (log: {log})"
