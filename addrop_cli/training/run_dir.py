"""A run directory's layout, defined once, and reading it back (no torch).

``addrop train`` writes ``recipe.yaml``, ``history.jsonl``, ``metrics.json``, ``best/`` and ``checkpoints/``
into its output directory; everything else (eval, plot, sweep, benchmarks) finds them through these names.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
from pathlib import Path
from typing import Any

from addrop_cli.errors import UserError
from addrop_cli.outputs import write_json
from addrop_cli.recipe import Recipe, build, flatten, load_yaml, run_identity
from addrop_cli.version import __version__

RECIPE_FILE, HISTORY_FILE, METRICS_FILE, BEST_DIR = "recipe.yaml", "history.jsonl", "metrics.json", "best"
MODEL_CONFIG = "config.json"  # what save_pretrained writes first (transformers' CONFIG_NAME, without transformers)
PROGRESS_FILE = "progress.json"  # where training is now (epoch, step), for a sweep's live view
CHECKPOINTS_DIR, CHECKPOINT_PREFIX, STATE_FILE = "checkpoints", "step-", "trainer_state.json"
LOGS_DIR = "logs"  # what experiment trackers write locally (TensorBoard events, ...)
PREVIOUS_RUN_DIR = ".previous-run"  # --overwrite: the replaced run, kept until the new run's first checkpoint
RUN_FILES = (RECIPE_FILE, HISTORY_FILE, METRICS_FILE, PROGRESS_FILE, BEST_DIR, CHECKPOINTS_DIR, LOGS_DIR)
VERSIONED_PACKAGES = ("torch", "transformers", "accelerate", "datasets")


def package_versions() -> dict[str, str]:
    """addrop's and its main dependencies' versions, as recorded in the first line of ``recipe.yaml``."""
    versions = {"addrop": __version__}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def recipe_path(directory: str | Path) -> Path:
    """Where a run (or a checkpoint it saved, such as ``best/``) keeps its resolved recipe."""
    return Path(directory) / RECIPE_FILE


def model_dir(path: str) -> str:
    """A run directory means its best checkpoint: ``runs/demo`` -> ``runs/demo/best``; anything else as given."""
    candidate = Path(path).expanduser()
    if not (candidate / MODEL_CONFIG).is_file() and (candidate / BEST_DIR / MODEL_CONFIG).is_file():
        return str(candidate / BEST_DIR)
    return path


def checkpoint_dirs(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary ones start with a dot and are ignored)."""
    root = output_dir / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.name.startswith(CHECKPOINT_PREFIX) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]))


def latest_checkpoint(output_dir: Path) -> Path | None:
    found = checkpoint_dirs(output_dir)
    return found[-1] if found else None


def check_output_dir(output_dir: Path, recipe: Recipe, overwrite: bool, resume: bool) -> Path | None:
    """Check the directory against this run, changing nothing; returns the checkpoint to resume from, if any.

    A directory holding a different run is refused unless ``overwrite`` (see :class:`SetAside`).
    The same run with a checkpoint is resumed; ``resume`` without a checkpoint is an error.
    """
    if overwrite:
        return None
    changed = other_run_differences(output_dir, recipe)
    if changed:
        raise UserError(
            f"output directory {output_dir} holds a different run ({'; '.join(changed)}); "
            "pass --overwrite to replace it, or choose another --output-dir"
        )
    checkpoint = latest_checkpoint(output_dir) if (output_dir / RECIPE_FILE).is_file() else None
    if resume and checkpoint is None:
        raise UserError(f"--resume: {output_dir} holds no checkpoint to resume from (run without --resume)")
    return checkpoint


class SetAside:
    """``--overwrite`` keeps the previous run until the new one has started.

    Entering moves the previous run's files (:data:`RUN_FILES`) into ``.previous-run/``; :meth:`discard`, called
    once the new run's first checkpoint is written, deletes them; leaving on an exception before that puts them
    back and removes what the new run wrote. A process killed in between leaves ``.previous-run/`` behind, and
    :func:`recover_set_aside` (at the next start) restores it. Main process only.
    """

    def __init__(self, output_dir: Path):
        self.output_dir = output_dir
        self.aside = output_dir / PREVIOUS_RUN_DIR
        self.pending = False

    def __enter__(self) -> SetAside:
        present = [name for name in RUN_FILES if (self.output_dir / name).exists()]
        if present:
            # Moved into a staging folder first: a kill mid-move leaves a folder that is only moved back.
            staging = self.output_dir / f"{PREVIOUS_RUN_DIR}.tmp"
            staging.mkdir()
            for name in present:
                os.replace(self.output_dir / name, staging / name)
            os.replace(staging, self.aside)
            self.pending = True
        return self

    def discard(self) -> None:
        """The new run has its first checkpoint: the previous run is deleted."""
        if self.pending:
            _discard(self.aside)
            self.pending = False

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is not None and self.pending:
            _restore(self.aside, self.output_dir, remove_new=True)
            self.pending = False


def recover_set_aside(output_dir: Path) -> str | None:
    """Undo an ``--overwrite`` that was killed before the new run's first checkpoint (and finish deleting one
    that was past it); returns a notice when a previous run was restored. Main process only."""
    _discard(output_dir / f"{PREVIOUS_RUN_DIR}.discarded")
    staging = output_dir / f"{PREVIOUS_RUN_DIR}.tmp"
    if staging.is_dir():  # killed while moving: the new run had written nothing yet
        _restore(staging, output_dir, remove_new=False)
    aside = output_dir / PREVIOUS_RUN_DIR
    if not aside.is_dir():
        return None
    _restore(aside, output_dir, remove_new=True)
    return (f"restored the run in {output_dir} that an interrupted --overwrite had set aside (the new run "
            "never reached its first checkpoint)")


def _restore(aside: Path, output_dir: Path, remove_new: bool) -> None:
    """Move the set-aside files back; with ``remove_new``, first delete every run file the new run wrote."""
    for name in RUN_FILES:
        target = output_dir / name
        if remove_new or (aside / name).exists():
            _remove(target)
        if (aside / name).exists():
            os.replace(aside / name, target)
    shutil.rmtree(aside)


def _discard(aside: Path) -> None:
    """Delete a set-aside run, first renamed so that a kill mid-delete never leaves something restorable."""
    discarded = aside.with_name(f"{PREVIOUS_RUN_DIR}.discarded")
    if aside != discarded and aside.is_dir():
        shutil.rmtree(discarded, ignore_errors=True)
        os.replace(aside, discarded)
    shutil.rmtree(discarded, ignore_errors=True)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def other_run_differences(output_dir: Path, recipe: Recipe) -> list[str]:
    """How the run saved in ``output_dir`` differs from ``recipe`` (see :func:`recipe_differences`); empty when
    the directory holds no run or this same one."""
    previous = output_dir / RECIPE_FILE
    if not previous.is_file():
        return []
    saved, wanted = run_identity(_with_defaults(load_yaml(previous))), run_identity(recipe.to_dict())
    return [] if saved == wanted else recipe_differences(saved, wanted)


def _with_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved recipe with the keys added since it was written at their defaults (as this version reads it)."""
    try:
        return build(Recipe, saved).to_dict()
    except UserError:  # written by a newer version: compare as it is
        return saved


def recipe_differences(saved: dict[str, Any], wanted: dict[str, Any], limit: int = 3) -> list[str]:
    """Up to ``limit`` dotted keys whose values differ, as ``"train.lr 2e-05 there, 5e-05 here"``."""
    there, here = flatten(saved), flatten(wanted)
    keys = [key for key in dict.fromkeys([*here, *there]) if there.get(key) != here.get(key)]
    shown = [f"{key} {there.get(key)!r} there, {here.get(key)!r} here" for key in keys[:limit]]
    return shown + ([f"{len(keys) - limit} more"] if len(keys) > limit else [])


def write_progress(output_dir: Path, values: dict[str, Any]) -> None:
    """Record where training is (epoch, step ...) in ``progress.json``, atomically."""
    write_json(output_dir / PROGRESS_FILE, values)


def read_progress(output_dir: Path) -> dict[str, Any] | None:
    """What :func:`write_progress` last wrote, or None (not started, or unreadable mid-rename)."""
    try:
        return json.loads((output_dir / PROGRESS_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def read_metrics(output_dir: Path) -> dict[str, Any]:
    """A run's ``metrics.json``: best epoch, selection metric, best eval scores (and test scores)."""
    path = output_dir / METRICS_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{output_dir} has no {METRICS_FILE}: the run has not finished an epoch yet") from None
    except (OSError, json.JSONDecodeError) as error:
        raise UserError(f"{path} is unreadable: {error}") from None


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
