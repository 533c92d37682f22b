"""Resumable training state: Accelerate's ``save_state`` plus our loop position, written atomically."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from accelerate import Accelerator

from addrop_cli.outputs import write_text, writing
from addrop_cli.training.run_dir import CHECKPOINT_PREFIX, CHECKPOINTS_DIR, STATE_FILE, checkpoint_dirs


@dataclass
class TrainingState:
    """Where the loop is: enough, with Accelerate's state, to continue bit for bit."""

    epoch: int = 1  # the epoch in progress (1-based)
    step_in_epoch: int = 0  # batches of that epoch already trained on
    global_step: int = 0  # optimizer updates so far
    loss_sum: float = 0.0  # sum of batch losses in the epoch in progress
    samples: int = 0  # training samples seen in the epoch in progress
    seconds: float = 0.0  # training seconds spent in the epoch in progress
    best_value: float = -math.inf
    best_epoch: int = 0
    best_eval: dict[str, float] = field(default_factory=dict)
    stale_evaluations: int = 0  # evaluations since the best one (train.patience counts these)
    history: list[dict[str, Any]] = field(default_factory=list)
    test: dict[str, float] | None = None
    finished: bool = False

    def to_json(self) -> str:
        values = asdict(self)
        values["best_value"] = None if math.isinf(self.best_value) else self.best_value
        return json.dumps(values, indent=1)

    @classmethod
    def from_json(cls, text: str) -> TrainingState:
        values = json.loads(text)
        if "stale_epochs" in values:  # written before train.eval_every, when every epoch was evaluated
            values["stale_evaluations"] = values.pop("stale_epochs")
        if values.get("best_value") is None:
            values["best_value"] = -math.inf
        return cls(**values)


# Accelerate warns at every save that a model with tied input and output embeddings (SmolLM2, Llama 3.2) has its
# shared tensor stored once; load_state ties it again, which the resume tests check.
TIED_WEIGHTS_LOGGER = "accelerate.utils.other"


@contextlib.contextmanager
def _quiet(name: str):
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


# What a checkpoint folder is called while it is written, replaced by a save at the same step, or deleted.
STAGING, SUPERSEDED, DELETING = "tmp", "superseded", "deleting"


def save_checkpoint(accelerator: Accelerator, output_dir: Path, state: TrainingState, keep: int | None) -> Path:
    """Save model, optimizer, scheduler, RNG states and ``state``; keep the newest ``keep`` checkpoints.

    Every process calls this (Accelerate saves per-process RNG states). Files go to a temporary directory that
    is renamed into place only when complete, and a checkpoint is renamed away before it is deleted, so a process
    killed at any point leaves the previous checkpoint or the new one whole (:func:`recover_checkpoints` tidies
    what it left). A write the file system refuses raises :class:`~addrop_cli.errors.WriteFailed` with the
    temporary directory removed.
    """
    root = output_dir / CHECKPOINTS_DIR
    final = root / f"{CHECKPOINT_PREFIX}{state.global_step:08d}"
    staging = _aside(final, STAGING)
    main = accelerator.is_main_process
    with writing(staging):
        try:
            if main:
                shutil.rmtree(staging, ignore_errors=True)
                staging.mkdir(parents=True)
            accelerator.wait_for_everyone()
            with _quiet(TIED_WEIGHTS_LOGGER):
                accelerator.save_state(str(staging), safe_serialization=True)
            accelerator.wait_for_everyone()
            if main:
                (staging / STATE_FILE).write_text(state.to_json(), encoding="utf-8")
        except BaseException:
            if main:
                shutil.rmtree(staging, ignore_errors=True)
            raise
    if main:
        with writing(final):
            superseded = _aside(final, SUPERSEDED)
            if final.exists():  # the epoch-end save supersedes a step save at the same update
                os.replace(final, superseded)
            os.replace(staging, final)
            shutil.rmtree(superseded, ignore_errors=True)
            if keep is not None:
                for old in checkpoint_dirs(output_dir)[:-keep]:
                    _delete(old)
    accelerator.wait_for_everyone()
    return final


def _aside(checkpoint: Path, why: str) -> Path:
    """Where ``checkpoint`` goes while it is replaced or deleted: a dot name, so never taken for a checkpoint."""
    return checkpoint.with_name(f".{checkpoint.name}.{why}")


def _delete(checkpoint: Path) -> None:
    """Delete a checkpoint, renamed first so that a kill mid-delete leaves no partial checkpoint behind."""
    doomed = _aside(checkpoint, DELETING)
    os.replace(checkpoint, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def recover_checkpoints(output_dir: Path) -> None:
    """Tidy what a process killed in :func:`save_checkpoint` left: a checkpoint renamed away to be superseded
    comes back if its successor never arrived; half-written and half-deleted ones go. Main process only."""
    root = output_dir / CHECKPOINTS_DIR
    if not root.is_dir():
        return
    for leftover in sorted(root.glob(f".{CHECKPOINT_PREFIX}*.*")):
        name, why = leftover.name[1:].rsplit(".", 1)
        if why == SUPERSEDED and not (root / name).exists():
            os.replace(leftover, root / name)
        elif why in (SUPERSEDED, DELETING, STAGING):
            shutil.rmtree(leftover, ignore_errors=True)


def load_checkpoint(accelerator: Accelerator, checkpoint: Path) -> TrainingState:
    """Restore everything :func:`save_checkpoint` wrote; returns the loop position."""
    accelerator.load_state(str(checkpoint))
    return TrainingState.from_json((checkpoint / STATE_FILE).read_text(encoding="utf-8"))


def update_state(accelerator: Accelerator, checkpoint: Path, state: TrainingState) -> None:
    """Rewrite only the loop position of an existing checkpoint (e.g. to record the test scores), atomically."""
    if accelerator.is_main_process:
        write_text(checkpoint / STATE_FILE, state.to_json())
    accelerator.wait_for_everyone()
