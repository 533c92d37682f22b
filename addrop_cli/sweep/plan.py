"""A sweep's plan: one :class:`Trial` per grid point and seed, the manifest (``sweep.json``) that keeps a
different grid out of the directory, and the result rows (``results.jsonl``) of the trials that finished.

A sweep directory holds ``sweep.json``, ``results.jsonl`` (one line per finished trial, rewritten atomically)
and ``trials/<trial-id>/``, each an ordinary ``addrop train`` output directory.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from addrop_cli.errors import UserError
from addrop_cli.outputs import write_json
from addrop_cli.recipe import Recipe, build, merge, nest, run_identity
from addrop_cli.sweep.grid import METHOD_KEY, SEED_KEY, applies_to, format_value, get_value, regularizer_key

SWEEP_FILE, RESULTS_FILE, TRIALS_DIR, LOG_FILE = "sweep.json", "results.jsonl", "trials", "train.log"
MAX_ID_LENGTH = 120

# ---------------------------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Trial:
    """One train run of a sweep: its settings (dotted key -> value, seed apart) and its resolved recipe."""

    id: str
    settings: dict[str, Any]
    seed: int
    baseline: bool
    recipe: Recipe

    @property
    def digest(self) -> str:
        """Identifies the exact run: finished results count only for a trial with the same recipe."""
        return recipe_digest(self.recipe)

    @property
    def method(self) -> str:
        """``ft`` for plain fine-tuning, else the regularizer's name in the method table (``addrop``, ...)."""
        return "ft" if self.baseline else self.recipe.addrop.method

    def row(self) -> dict[str, Any]:
        return {"trial": self.id, "settings": self.settings, "seed": self.seed, "baseline": self.baseline}


def recipe_digest(recipe: Recipe) -> str:
    """Hash of everything that shapes the run; where it is written is left out, so a moved sweep keeps its trials."""
    values = run_identity(recipe.to_dict())
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


def _id_part(key: str, value: Any) -> str:
    name = key.rsplit(".", 1)[-1]
    text = format_value(value)
    joined = f"{name}{text}" if isinstance(value, (int, float)) and not isinstance(value, bool) else f"{name}-{text}"
    return re.sub(r"[^A-Za-z0-9.+=-]", "-", joined)


def trial_id(settings: dict[str, Any], seed: int, method: str) -> str:
    """A readable, path-safe name led by the method (``ft`` for plain fine-tuning): ``addrop_p0.3_q0.5_lr2e-05_seed1``,
    ``rdrop_alpha0.5_seed1``, ``ft_seed1``."""
    parts = [method] + [_id_part(k, v) for k, v in settings.items() if k != METHOD_KEY] + [f"seed{seed}"]
    name = "_".join(parts)
    if len(name) > MAX_ID_LENGTH:  # long model paths: keep the name usable, still unique
        digest = hashlib.sha256(name.encode()).hexdigest()[:8]
        name = f"{name[:MAX_ID_LENGTH - 9]}-{digest}"
    return name


def plan_trials(base: Recipe, axes: dict[str, list[Any]], seeds: list[int], baseline: bool,
                directory: Path) -> list[Trial]:
    """Every trial of the grid, seed by seed (so one seed's full grid finishes first): the baseline points,
    then each method's points (a method takes only the axes that shape it, see :func:`method_groups`). Raises
    UserError for a value the recipe rejects, before anything runs."""
    if base.train.push_to_hub:
        raise UserError(f"train.push_to_hub={base.train.push_to_hub!r} is not for sweeps (every trial would upload "
                        "to that repository): push the chosen setting with addrop train --recipe "
                        "SWEEP/best-recipe.yaml --push-to-hub REPO_ID")
    regularizer_axes = [key for key in axes if regularizer_key(key)]
    if not base.addrop.enabled and (regularizer_axes or baseline):
        raise UserError("the base recipe has AD-DROP disabled (--no-addrop): sweeping "
                        f"{', '.join(regularizer_axes) or '--baseline'} needs it enabled")
    plain_axes = {key: values for key, values in axes.items() if not regularizer_key(key)}
    groups = ([(plain_axes, True)] if baseline else []) + [(group, False) for group in method_groups(base, axes)]
    trials = [_trial(base, group_axes, combination, seed, is_baseline, directory)
              for seed in seeds for group_axes, is_baseline in groups
              for combination in itertools.product(*group_axes.values())]
    names = [trial.id for trial in trials]
    if len(set(names)) != len(names):
        raise UserError("two grid values give the same trial name (they are equal once typed): "
                        + ", ".join(sorted({n for n in names if names.count(n) > 1})))
    return trials


def method_groups(base: Recipe, axes: dict[str, list[Any]]) -> list[dict[str, list[Any]]]:
    """The axes of each method swept (``--method``, else the recipe's): only the keys that shape it, so R-Drop
    trials do not repeat over AD-DROP's p and q. An axis that shapes none of the methods is refused."""
    methods = axes.get(METHOD_KEY, [base.addrop.method])
    for key in axes:
        if not any(applies_to(key, method) for method in methods):
            raise UserError(f"{key} is swept but shapes none of the methods swept ({', '.join(methods)}); add its "
                            f"method to --method or leave {key} out")
    return [{key: [method] if key == METHOD_KEY else values for key, values in axes.items()
             if applies_to(key, method)} for method in methods]


def _trial(base: Recipe, axes: dict[str, list[Any]], combination: tuple, seed: int, baseline: bool,
           directory: Path) -> Trial:
    """The trial of one grid point and seed, its recipe written to its own folder under ``directory``."""
    values = merge(base.to_dict(), nest(SEED_KEY, seed))
    for key, value in zip(axes, combination, strict=True):
        values = merge(values, nest(key, value))
    if baseline:
        values = merge(values, nest("addrop.enabled", False))
    recipe = build(Recipe, values)
    # Typed values (the YAML "2e-5" becomes 2e-05) name the trial.
    settings = {key: get_value(recipe.to_dict(), key) for key in axes}
    name = trial_id(settings, seed, "ft" if baseline else recipe.addrop.method)
    recipe.train.output_dir = str(directory / TRIALS_DIR / name)
    return Trial(name, settings, seed, baseline, recipe)


# ------------------------------------------------------------------------------ manifest and results


def manifest(base: Recipe, axes: dict[str, list[Any]], seeds: list[int], baseline: bool) -> dict[str, Any]:
    """What ``sweep.json`` records; re-running compares it so a different grid is never mixed in."""
    values = run_identity(base.to_dict())
    values["train"].pop("seed")
    return json.loads(json.dumps({"base": values, "axes": axes, "seeds": seeds, "baseline": baseline}))


def check_manifest(directory: Path, wanted: dict[str, Any], force: bool) -> None:
    """Refuse a sweep directory that holds a different grid (unless ``force``); record this grid."""
    path = directory / SWEEP_FILE
    if path.is_file() and not force:
        try:
            previous = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise UserError(f"{path} is unreadable ({error}); pass --force to start this grid over it") from None
        if previous != wanted:
            changed = [key for key in wanted if previous.get(key) != wanted[key]]
            raise UserError(f"{directory} holds a different sweep ({', '.join(changed)} differ in {SWEEP_FILE}); "
                            "re-run the original command to resume it, choose another --output-dir, or pass "
                            "--force to run this grid there (finished trials with identical settings are kept)")
    write_json(path, wanted)


def load_manifest(directory: Path) -> dict[str, Any]:
    path = directory / SWEEP_FILE
    if not path.is_file():
        raise UserError(f"{directory} is not a sweep directory (no {SWEEP_FILE}); run addrop sweep there first")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise UserError(f"{path} is unreadable: {error}") from None


def plan_from_manifest(directory: Path, values: dict[str, Any]) -> list[Trial]:
    base_values = merge(values["base"], {"train": {"output_dir": str(directory)}})
    return plan_trials(build(Recipe, base_values), values["axes"], values["seeds"], values["baseline"], directory)


def read_results(directory: Path) -> list[dict[str, Any]]:
    path = directory / RESULTS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def current_results(trials: list[Trial], rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Trial id -> its result row, only for rows of exactly these trials (same recipe digest)."""
    wanted = {trial.id: trial.digest for trial in trials}
    return {row["trial"]: row for row in rows if wanted.get(row["trial"]) == row.get("digest")}
