"""A run directory's layout, defined once, and reading it back (no torch).

``addrop train`` writes ``recipe.yaml``, ``history.jsonl``, ``metrics.json``, ``best/`` and ``checkpoints/``
into its output directory; everything else (eval, plot, sweep, benchmarks) finds them through these names.
"""

from __future__ import annotations

import importlib.metadata
import json
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


def prepare_output_dir(output_dir: Path, recipe: Recipe, overwrite: bool, resume: bool) -> Path | None:
    """Check the directory against this run; returns the checkpoint to resume from, if any.

    A directory holding a different run is refused unless ``overwrite`` (which clears our files from it).
    The same run with a checkpoint is resumed; ``resume`` without a checkpoint is an error.
    """
    previous = output_dir / RECIPE_FILE
    if overwrite:
        for name in (RECIPE_FILE, HISTORY_FILE, METRICS_FILE):
            (output_dir / name).unlink(missing_ok=True)
        for name in (BEST_DIR, CHECKPOINTS_DIR, LOGS_DIR):
            shutil.rmtree(output_dir / name, ignore_errors=True)
        return None
    saved = _with_defaults(load_yaml(previous)) if previous.is_file() else None
    if saved is not None and run_identity(saved) != run_identity(recipe.to_dict()):
        changed = "; ".join(recipe_differences(saved, recipe.to_dict()))
        raise UserError(
            f"output directory {output_dir} holds a different run ({changed}); "
            "pass --overwrite to replace it, or choose another --output-dir"
        )
    checkpoint = latest_checkpoint(output_dir) if previous.is_file() else None
    if resume and checkpoint is None:
        raise UserError(f"--resume: {output_dir} holds no checkpoint to resume from (run without --resume)")
    return checkpoint


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
