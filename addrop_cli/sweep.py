"""Sweeps: a grid of train runs over p, q, seeds and any recipe key, resumable, with results in one JSONL file.

A sweep directory holds ``sweep.json`` (the grid, so a different grid is refused), ``results.jsonl`` (one line
per finished trial, rewritten atomically) and ``trials/<trial-id>/``, each an ordinary ``addrop train`` output
directory. Summaries and heatmaps are made by :mod:`addrop_cli.sweep_summary`.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import yaml

from addrop_cli.config import Recipe, build, dump_yaml, load_yaml, merge, nest
from addrop_cli.errors import UserError
from addrop_cli.outputs import write_json, write_jsonl, write_text

SWEEP_FILE, RESULTS_FILE, TRIALS_DIR, LOG_FILE = "sweep.json", "results.jsonl", "trials", "train.log"
P_KEY, Q_KEY, SEED_KEY = "addrop.p", "addrop.q", "train.seed"
DEFAULT_STEP = Decimal("0.1")
MAX_ID_LENGTH = 120
# Keys a sweep sets itself, or that make no sense to vary.
RESERVED_KEYS = {P_KEY: "--p", Q_KEY: "--q", SEED_KEY: "--seeds", "train.output_dir": "--output-dir",
                 "addrop.enabled": "--baseline"}

# ------------------------------------------------------------------------------------------- parsing


def _decimal(text: str, option: str, spec: str) -> Decimal:
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise UserError(f"{option} {spec!r} is invalid: {text.strip()!r} is not a number "
                        "(use a range 0.1:0.9, a range with step 0.1:0.9:0.2, or a list 0.1,0.3,0.5)") from None
    if not value.is_finite():
        raise UserError(f"{option} {spec!r} is invalid: {text.strip()!r} is not a finite number")
    return value


def parse_values(spec: str, option: str) -> list[float]:
    """``"0.1:0.9"`` (inclusive, step 0.1), ``"0.1:0.9:0.2"`` or ``"0.1,0.3,0.5"`` -> floats.

    Ranges are stepped in decimal arithmetic, so ``0.1:0.9`` is exactly the nine values 0.1, 0.2, ..., 0.9
    (float steps drift: 0.1 + 0.2 != 0.3).
    """
    if ":" in spec:
        parts = spec.split(":")
        if len(parts) not in (2, 3):
            raise UserError(f"{option} {spec!r} is invalid: a range is START:STOP or START:STOP:STEP")
        start, stop = _decimal(parts[0], option, spec), _decimal(parts[1], option, spec)
        step = _decimal(parts[2], option, spec) if len(parts) == 3 else DEFAULT_STEP
        if step <= 0 or stop < start:
            raise UserError(f"{option} {spec!r} is invalid: a range needs START <= STOP and a positive STEP")
        count = int((stop - start) / step) + 1
        return [float(start + i * step) for i in range(count)]
    values = [float(_decimal(part, option, spec)) for part in spec.split(",") if part.strip()]
    if not values:
        raise UserError(f"{option} {spec!r} is invalid: give at least one value")
    if len(set(values)) != len(values):
        raise UserError(f"{option} {spec!r} is invalid: a value is repeated")
    return values


def parse_seeds(spec: str) -> list[int]:
    """``"5"`` -> seeds 1..5; ``"1,2,3"`` -> those seeds."""
    parts = [part.strip() for part in spec.split(",") if part.strip()]
    if not parts or not all(part.isdigit() for part in parts):
        raise UserError(f"--seeds {spec!r} is invalid: give a count (5 means seeds 1 to 5) or a list like 1,2,3")
    if len(parts) == 1:
        count = int(parts[0])
        if count < 1:
            raise UserError(f"--seeds {spec!r} is invalid: the count must be at least 1")
        return list(range(1, count + 1))
    seeds = [int(part) for part in parts]
    if len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds {spec!r} is invalid: a seed is repeated")
    return seeds


def recipe_keys() -> list[str]:
    """Every dotted recipe key: ``task``, ``model``, ``data.max_length``, ``train.lr``, ``addrop.p``, ..."""
    keys = []
    for name, annotation in typing.get_type_hints(Recipe).items():
        if dataclasses.is_dataclass(annotation):
            keys.extend(f"{name}.{inner.name}" for inner in dataclasses.fields(annotation))
        else:
            keys.append(name)
    return keys


def resolve_key(name: str) -> str:
    """A dotted recipe key from itself or its last part (``lr`` -> ``train.lr``, ``k_shot`` -> ``data.k_shot``)."""
    keys = recipe_keys()
    matches = [name] if name in keys else [key for key in keys if key.rsplit(".", 1)[-1] == name]
    if len(matches) != 1:
        close = difflib.get_close_matches(name, keys + [key.rsplit(".", 1)[-1] for key in keys], n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise UserError(f"--grid: unknown recipe key '{name}'{hint} (use a dotted key such as train.lr, "
                        "addrop.layers or data.k_shot, or its last part)")
    key = matches[0]
    if key in RESERVED_KEYS:
        raise UserError(f"--grid {name}: the sweep sets {key} itself; use {RESERVED_KEYS[key]} instead")
    return key


def _split_values(text: str) -> list[str]:
    """Split on commas outside brackets, so ``first,all,[0,3]`` is three values."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += (char in "[{") - (char in "]}")
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [part.strip() for part in parts]


def parse_grid(assignment: str) -> tuple[str, list[Any]]:
    """``"lr=1e-5,2e-5"`` -> ``("train.lr", ["1e-5", "2e-5"])``: values read as YAML, typed when a recipe is built."""
    if "=" not in assignment:
        raise UserError(f"--grid {assignment!r} is invalid: use KEY=V1,V2,... e.g. --grid train.lr=1e-5,2e-5")
    name, raw = (part.strip() for part in assignment.split("=", 1))
    key = resolve_key(name)
    values = [yaml.safe_load(part) if part else None for part in _split_values(raw)]
    if not raw or any(value is None for value in values):
        raise UserError(f"--grid {assignment!r} is invalid: give one or more comma-separated values")
    return key, values


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

    def row(self) -> dict[str, Any]:
        return {"trial": self.id, "settings": self.settings, "seed": self.seed, "baseline": self.baseline}


def recipe_digest(recipe: Recipe) -> str:
    """Hash of everything that shapes the run; where it is written is left out, so a moved sweep keeps its trials."""
    values = recipe.to_dict()
    values["train"].pop("output_dir")
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


def get_value(values: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        values = values[part]
    return values


def format_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return "+".join(format_value(item) for item in value)
    return str(value)


def _id_part(key: str, value: Any) -> str:
    name = key.rsplit(".", 1)[-1]
    text = format_value(value)
    joined = f"{name}{text}" if isinstance(value, (int, float)) and not isinstance(value, bool) else f"{name}-{text}"
    return re.sub(r"[^A-Za-z0-9.+=-]", "-", joined)


def trial_id(settings: dict[str, Any], seed: int, baseline: bool) -> str:
    """A readable, path-safe name: ``addrop_p0.3_q0.5_lr2e-05_seed1``, ``ft_seed1``."""
    parts = ["ft" if baseline else "addrop"] + [_id_part(k, v) for k, v in settings.items()] + [f"seed{seed}"]
    name = "_".join(parts)
    if len(name) > MAX_ID_LENGTH:  # long model paths: keep the name usable, still unique
        digest = hashlib.sha256(name.encode()).hexdigest()[:8]
        name = f"{name[:MAX_ID_LENGTH - 9]}-{digest}"
    return name


def plan_trials(base: Recipe, axes: dict[str, list[Any]], seeds: list[int], baseline: bool,
                directory: Path) -> list[Trial]:
    """Every trial of the grid, seed by seed (so one seed's full grid finishes first): the baseline points,
    then the AD-DROP points. Raises UserError for a value the recipe rejects, before anything runs."""
    base_values = base.to_dict()
    addrop_axes = [key for key in axes if key.startswith("addrop.")]
    if not base.addrop.enabled and (addrop_axes or baseline):
        raise UserError("the base recipe has AD-DROP disabled (--no-addrop): sweeping "
                        f"{', '.join(addrop_axes) or '--baseline'} needs it enabled")
    plain_axes = {key: values for key, values in axes.items() if key not in addrop_axes}
    trials = []
    for seed in seeds:
        groups = ([(plain_axes, True)] if baseline else []) + [(axes, False)]
        for group_axes, is_baseline in groups:
            for combination in itertools.product(*group_axes.values()):
                values = merge(base_values, nest(SEED_KEY, seed))
                for key, value in zip(group_axes, combination, strict=True):
                    values = merge(values, nest(key, value))
                if is_baseline:
                    values = merge(values, nest("addrop.enabled", False))
                recipe = build(Recipe, values)
                # Typed values (the YAML "2e-5" becomes 2e-05) name the trial.
                settings = {key: get_value(recipe.to_dict(), key) for key in group_axes}
                name = trial_id(settings, seed, is_baseline)
                recipe.train.output_dir = str(directory / TRIALS_DIR / name)
                trials.append(Trial(name, settings, seed, is_baseline, recipe))
    names = [trial.id for trial in trials]
    if len(set(names)) != len(names):
        raise UserError("two grid values give the same trial name (they are equal once typed): "
                        + ", ".join(sorted({n for n in names if names.count(n) > 1})))
    return trials


# ------------------------------------------------------------------------------ manifest and results


def manifest(base: Recipe, axes: dict[str, list[Any]], seeds: list[int], baseline: bool) -> dict[str, Any]:
    """What ``sweep.json`` records; re-running compares it so a different grid is never mixed in."""
    values = base.to_dict()
    values["train"].pop("seed")
    values["train"].pop("output_dir")
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


def _result_row(trial: Trial, seconds: float, status: str = "ok", message: str | None = None) -> dict[str, Any]:
    directory = Path(trial.recipe.train.output_dir)
    row = {**trial.row(), "digest": trial.digest, "status": status, "seconds": round(seconds, 1)}
    if status == "ok":
        metrics = json.loads((directory / "metrics.json").read_text(encoding="utf-8"))
        from addrop_cli.training import read_history  # torch-heavy; only once a trial has finished

        history = read_history(directory, ("seconds",))
        row.update(metric=metrics["metric"], best_epoch=metrics["best_epoch"], eval=metrics["eval"],
                   test=metrics.get("test"), train_seconds=round(sum(h["seconds"] for h in history), 1))
    else:
        row["message"] = message
    return row


# ------------------------------------------------------------------------------------------- running


@dataclass
class SweepProgress:
    """What the live display reads: finished rows, running trials with their start time, the total."""

    total: int
    finished: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    running: dict[str, float] = dataclasses.field(default_factory=dict)
    skipped: int = 0


class SweepInterrupted(Exception):
    """SIGINT/SIGTERM: running trials checkpointed; re-running the command resumes."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"sweep interrupted by {signal.Signals(signum).name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


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
    saved = directory / "recipe.yaml"
    if saved.is_file() and load_yaml(saved) != trial.recipe.to_dict():
        if not force:
            raise UserError(f"{directory} holds a different run than trial {trial.id}; pass --force to replace it")
        shutil.rmtree(directory)


def run_sweep(
    trials: list[Trial],
    directory: Path,
    *,
    workers: int = 1,
    force: bool = False,
    trust_remote_code: bool = False,
    on_change: Callable[[SweepProgress], None] | None = None,
) -> SweepProgress:
    """Run every trial without a result yet; results.jsonl is rewritten atomically after each one.

    One worker trains in this process; more start one ``addrop train`` process per trial (each pinned to one
    GPU, round robin, when GPUs are visible). Raises :class:`SweepInterrupted` on SIGINT/SIGTERM once the
    running trials have checkpointed, and UserError when a trial rejects its input.
    """
    rows = read_results(directory)
    done = current_results(trials, rows)
    # Rows of other grids (kept under --force) stay in the file; summaries only read this plan's rows.
    progress = SweepProgress(total=len(trials), finished=[done[t.id] for t in trials if t.id in done],
                             skipped=len(done))
    todo = [trial for trial in trials if trial.id not in done]
    for trial in todo:
        _prepare_trial_dir(trial, force)

    def record(row: dict[str, Any]) -> None:
        rows[:] = [r for r in rows if r["trial"] != row["trial"]] + [row]
        write_jsonl(directory / RESULTS_FILE, rows)
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

    from addrop_cli.training import TrainingDiverged, TrainingInterrupted, train

    for trial in todo:
        directory = Path(trial.recipe.train.output_dir)
        directory.mkdir(parents=True, exist_ok=True)
        progress.running[trial.id] = time.time()
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
    running: dict[int, tuple[subprocess.Popen, Trial, float, Any]] = {}  # worker slot -> process
    stop: list[int] = []

    def handle(signum: int, frame: Any) -> None:
        stop.append(signum)
        for process, *_ in running.values():
            if process.poll() is None:
                process.send_signal(signum)

    previous = {signum: signal.signal(signum, handle) for signum in (signal.SIGINT, signal.SIGTERM)}
    failure: str | None = None
    try:
        while running or (pending and not stop and failure is None):
            while pending and not stop and failure is None and len(running) < workers:
                slot = min(set(range(workers)) - set(running))
                trial = pending.pop()
                running[slot] = (*_start_trial(trial, devices[slot % len(devices)] if devices else None,
                                               trust_remote_code), time.perf_counter())
                progress.running[trial.id] = time.time()
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
                elif code >= 128 and stop:
                    progress.running.pop(trial.id, None)
                else:
                    failure = failure or f"trial {trial.id} failed (exit {code}): {_last_line(trial)}"
                    progress.running.pop(trial.id, None)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if stop:
        raise SweepInterrupted(stop[0])
    if failure:
        raise UserError(failure)


def _start_trial(trial: Trial, device: str | None, trust_remote_code: bool) -> tuple[subprocess.Popen, Trial, Any]:
    directory = Path(trial.recipe.train.output_dir)
    recipe_path = directory / "recipe.yaml"
    if not recipe_path.is_file():
        write_text(recipe_path, dump_yaml(trial.recipe.to_dict()))
    command = [sys.executable, "-m", "addrop_cli", "train", "--recipe", str(recipe_path)]
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
