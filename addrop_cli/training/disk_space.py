"""What a run will write, estimated before training and checked against the output folder's free space.

A checkpoint is the model's state dict, the optimizer's state (AdamW: two tensors the size of each trained
parameter) and a little more (scheduler, RNG states, the loop position); ``best/`` is the model's weights and the
tokenizer. The run holds ``train.save_total_limit`` checkpoints, one more while the next is written, and
``best/`` twice while it is replaced (:func:`~addrop_cli.outputs.write_dir`).
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from addrop_cli.outputs import existing_parent
from addrop_cli.training.run_dir import BEST_DIR, CHECKPOINTS_DIR

ADAM_STATES = 2  # AdamW's exp_avg and exp_avg_sq, each shaped and typed like its parameter
SMALL_FILES = 4 << 20  # scheduler, RNG states, trainer_state.json, recipe.yaml, history, metrics, model card


@dataclass(frozen=True)
class DiskPlan:
    """The room a run needs in its output folder, and what that folder's file system has."""

    folder: Path  # the output folder, or its nearest existing parent (where the free space is counted)
    checkpoint: int  # bytes of one resumable checkpoint
    best: int  # bytes of best/
    at_once: int  # checkpoints on disk at the fullest moment (the ones kept and the one being written)
    held: int  # bytes this run's checkpoints and best/ already take there (a resumed run rotates them out)
    free: int

    @property
    def peak(self) -> int:
        """The most the run's files take at once: every checkpoint at once with best/, or those kept with best/ and
        its replacement."""
        kept = max(self.at_once - 1, 0)
        return max(self.at_once * self.checkpoint + self.best, kept * self.checkpoint + 2 * self.best) + SMALL_FILES

    @property
    def needed(self) -> int:
        """Free bytes the run still needs: its peak, less what its own earlier files already hold."""
        return max(self.peak - self.held, 0)

    @property
    def fits(self) -> bool:
        return self.needed <= self.free

    def summary(self) -> str:
        """The run header's line on disk use."""
        return (f"disk: checkpoints {size(self.checkpoint)} each, up to {self.at_once} at once, best/ "
                f"{size(self.best)}: needs {size(self.needed)}, {size(self.free)} free in {self.folder}")

    def refusal(self) -> str:
        """The one-line error when the run does not fit."""
        return (f"the output folder {self.folder} has {size(self.free)} free, and this run needs about "
                f"{size(self.needed)} (checkpoints of {size(self.checkpoint)}, up to {self.at_once} at once, and "
                f"best/ {size(self.best)}): free some space, lower train.save_total_limit, choose another "
                "output folder, or train anyway (addrop train --skip-space-check)")


def size(count: int) -> str:
    """Bytes for people: ``87.3 MB``, ``1.26 GB`` (decimal units, as ``df -H`` and file managers show)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.3g} {unit}"
    return f"{count} B"


def plan_disk(model: torch.nn.Module, tokenizer, output_dir: Path, keep: int | None, saves: int,
              reuse: bool) -> DiskPlan:
    """The plan for a run saving ``saves`` checkpoints and keeping the newest ``keep`` (None: all); with
    ``reuse`` (not ``--overwrite``) the run's files already in ``output_dir`` count as room it has."""
    weights = state_bytes(model)
    trained = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    at_once = saves if keep is None else min(keep + 1, saves)
    held = sum(tree_bytes(output_dir / name) for name in (CHECKPOINTS_DIR, BEST_DIR)) if reuse else 0
    folder = existing_parent(output_dir)
    return DiskPlan(folder, weights + ADAM_STATES * trained, weights + tokenizer_bytes(tokenizer), max(at_once, 1),
                    held, shutil.disk_usage(folder).free)


def checkpoints_per_run(epochs: int, updates_per_epoch: int, save_steps: int | None, save_every: int = 1) -> int:
    """How many checkpoints a run writes: one every ``save_every`` epochs and after the last, and one every
    ``save_steps`` updates within them."""
    within = 0 if not save_steps else math.ceil(updates_per_epoch * epochs / save_steps)
    return math.ceil(epochs / save_every) + within


def state_bytes(model: torch.nn.Module) -> int:
    """Bytes of ``model``'s state dict as safetensors stores it: each storage once (tied weights share one)."""
    seen: dict[int, int] = {}
    for tensor in model.state_dict().values():
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = max(seen.get(storage.data_ptr(), 0), tensor.numel() * tensor.element_size())
    return sum(seen.values())


def tokenizer_bytes(tokenizer) -> int:
    """Bytes the tokenizer's files take, saved once to a scratch folder."""
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer.save_pretrained(scratch)
        return tree_bytes(Path(scratch))


def tree_bytes(path: Path) -> int:
    """Bytes of the files under the folder ``path`` (0 when it does not exist)."""
    total = 0
    for folder, _, names in os.walk(path):
        for name in names:
            with contextlib.suppress(FileNotFoundError):  # deleted meanwhile (a run rotating its checkpoints)
                total += (Path(folder) / name).stat().st_size
    return total
