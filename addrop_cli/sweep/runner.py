"""The sweep driver: launches trials on a :class:`Backend` (this process, local processes, a Ray cluster),
retries lost attempts, and alone writes ``results.jsonl`` (one row per finished trial, atomically)."""

from __future__ import annotations

import dataclasses
import shutil
import statistics
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from addrop_cli import locks
from addrop_cli.errors import DIVERGED_EXIT_CODE, UserError
from addrop_cli.interrupts import Interrupted, StopRequest, signal_name
from addrop_cli.outputs import write_jsonl
from addrop_cli.sweep.plan import RESULTS_FILE, Trial, current_results, read_results
from addrop_cli.sweep.trials import Outcome
from addrop_cli.training.one_class import best_epoch_majority
from addrop_cli.training.run_dir import (
    CHECKPOINTS_DIR,
    latest_checkpoint,
    other_run_differences,
    read_history,
    read_metrics,
    read_progress,
)


def _result_row(trial: Trial, outcome: Outcome, attempts: int) -> dict[str, Any]:
    """What results.jsonl keeps of a trial that ended: its scores (or why it diverged), the seconds it ran
    where it ran, that node and its GPUs, how many attempts it took and, for classification, the best epoch's
    most-predicted class and its share (``majority_label``, ``majority_share``: a trial that predicted one class
    is marked in the live view and the summary)."""
    directory = Path(trial.recipe.train.output_dir)
    status = "ok" if outcome.code == 0 else "diverged"
    row = {**trial.row(), "digest": trial.digest, "status": status, "seconds": round(outcome.seconds, 1),
           "node": outcome.node, "gpus": outcome.gpus, "attempts": attempts}
    if status == "ok":
        metrics = read_metrics(directory)
        history = read_history(directory, ("seconds",))
        row.update(metric=metrics["metric"], best_epoch=metrics["best_epoch"], eval=metrics["eval"],
                   test=metrics.get("test"), train_seconds=round(sum(h["seconds"] for h in history), 1))
        majority = best_epoch_majority(directory, trial.recipe.task, metrics["best_epoch"])
        if majority is not None:
            row.update(majority_label=majority[0], majority_share=majority[1])
    else:
        row["message"] = outcome.message
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


class Backend(Protocol):
    """Where a sweep's trials run. The driver (:func:`run_sweep`) keeps all bookkeeping; a backend only starts
    attempts and reports how each ended."""

    def capacity(self) -> int:
        """How many trials may run at once now."""

    def running(self) -> int:
        """How many attempts are under way."""

    def launch(self, trial: Trial) -> None:
        """Start one attempt at ``trial``."""

    def finished(self, timeout: float) -> list[tuple[Trial, Outcome]]:
        """The attempts that ended, waiting up to ``timeout`` seconds for one."""

    def stop(self, signum: int) -> None:
        """A stop signal reached the driver: let every running attempt checkpoint and end. Called from a
        signal handler, so it only passes the signal on or sets a flag."""


def _check_trial_dir(trial: Trial, force: bool) -> None:
    """A trial directory holding a different recipe is refused without --force; with it, the trial replaces
    that run the way ``addrop train --overwrite`` does (kept until the trial's first checkpoint)."""
    directory = Path(trial.recipe.train.output_dir)
    changed = other_run_differences(directory, trial.recipe)
    if changed and not force:
        raise UserError(f"{directory} holds a different run than trial {trial.id} ({'; '.join(changed)}); pass "
                        "--force to replace it")


def run_sweep(
    trials: list[Trial],
    directory: Path,
    backend: Backend,
    *,
    force: bool = False,
    keep_checkpoints: bool = False,
    max_retries: int = 2,
    on_change: Callable[[SweepProgress], None] | None = None,
    record: bool = True,
) -> SweepProgress:
    """Run every trial without a result yet on ``backend``; results.jsonl is rewritten atomically by this
    process alone, one row as each trial ends (not at all without ``record``: a ``torchrun`` process other than
    the main one, training the same trials).

    A finished trial's resumable checkpoints are deleted once its row is written (its ``best/``, history and
    metrics stay), unless ``keep_checkpoints``; a diverged trial keeps them. An attempt lost with its worker or
    node, or ended by a signal the driver did not send, is retried up to ``max_retries`` times, resuming from
    the trial's last checkpoint. Raises :class:`SweepInterrupted` on SIGINT/SIGTERM once the running trials
    have checkpointed, and UserError when a trial fails otherwise.
    """
    rows = read_results(directory)
    done = current_results(trials, rows)
    # Rows of other grids (kept under --force) stay in the file; summaries only read this plan's rows.
    progress = SweepProgress(total=len(trials), workers=backend.capacity(),
                             finished=[done[t.id] for t in trials if t.id in done], skipped=len(done))
    todo = [trial for trial in trials if trial.id not in done]
    for trial in todo:
        _check_trial_dir(trial, force)

    def recorded(trial: Trial, outcome: Outcome, attempts: int) -> None:
        row = _result_row(trial, outcome, attempts)
        if record:
            rows[:] = [r for r in rows if r["trial"] != row["trial"]] + [row]
            write_jsonl(directory / RESULTS_FILE, rows)
            if row["status"] == "ok" and not keep_checkpoints:
                shutil.rmtree(progress.directories[row["trial"]] / CHECKPOINTS_DIR, ignore_errors=True)
        progress.finished.append(row)

    _drive(todo, backend, progress, recorded, max_retries, on_change or (lambda _: None))
    return progress


def _drive(todo: list[Trial], backend: Backend, progress: SweepProgress, record, max_retries: int,
           on_change: Callable[[SweepProgress], None]) -> None:
    """Launch trials while the backend has room; record, retry or fail each as its attempt ends."""
    pending, retries = deque(todo), Counter()
    failure: str | None = None
    with StopRequest(on_signal=backend.stop) as stop:
        while backend.running() or (pending and not stop.requested and failure is None):
            while pending and not stop.requested and failure is None and backend.running() < backend.capacity():
                trial = pending.popleft()
                progress.start(trial)
                on_change(progress)
                backend.launch(trial)
            for trial, outcome in backend.finished(timeout=0.2):
                progress.running.pop(trial.id, None)
                if outcome.code in (0, DIVERGED_EXIT_CODE):
                    record(trial, outcome, retries[trial.id] + 1)
                elif outcome.killed and stop.requested:
                    pass  # stopped on request: it checkpointed, and the next run resumes it
                elif outcome.killed and retries[trial.id] < max_retries:
                    retries[trial.id] += 1
                    progress.notes.append(f"retrying {trial.id} ({retries[trial.id]}/{max_retries}): "
                                          f"{outcome.message}")
                    # The lost attempt's lock cannot be checked from here (another node): its attempt is over.
                    locks.break_lock(Path(trial.recipe.train.output_dir) / locks.TRAIN_LOCK)
                    pending.appendleft(trial)
                else:
                    failure = failure or f"trial {trial.id} failed: {outcome.message}"
                on_change(progress)
    if stop.requested:
        raise SweepInterrupted(stop.signum)
    if failure:
        raise UserError(failure)
