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

from addrop_cli.outputs import write_text
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
    stale_epochs: int = 0
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


def save_checkpoint(accelerator: Accelerator, output_dir: Path, state: TrainingState, keep: int | None) -> Path:
    """Save model, optimizer, scheduler, RNG states and ``state``; keep the newest ``keep`` checkpoints.

    Every process calls this (Accelerate saves per-process RNG states). Files go to a temporary directory that
    is renamed into place only when complete, so a kill mid-save leaves the previous checkpoint intact.
    """
    root = output_dir / CHECKPOINTS_DIR
    final = root / f"{CHECKPOINT_PREFIX}{state.global_step:08d}"
    staging = root / f".{final.name}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    accelerator.wait_for_everyone()
    with _quiet(TIED_WEIGHTS_LOGGER):
        accelerator.save_state(str(staging), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (staging / STATE_FILE).write_text(state.to_json(), encoding="utf-8")
        if final.exists():  # the epoch-end save supersedes a step save at the same update
            shutil.rmtree(final)
        os.replace(staging, final)
        if keep is not None:
            for old in checkpoint_dirs(output_dir)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Accelerator, checkpoint: Path) -> TrainingState:
    """Restore everything :func:`save_checkpoint` wrote; returns the loop position."""
    accelerator.load_state(str(checkpoint))
    return TrainingState.from_json((checkpoint / STATE_FILE).read_text(encoding="utf-8"))


def update_state(accelerator: Accelerator, checkpoint: Path, state: TrainingState) -> None:
    """Rewrite only the loop position of an existing checkpoint (e.g. to record the test scores), atomically."""
    if accelerator.is_main_process:
        write_text(checkpoint / STATE_FILE, state.to_json())
    accelerator.wait_for_everyone()
