"""Experiment tracking through Accelerate's own trackers (``Accelerator(log_with=...)``, ``init_trackers``,
``log``): TensorBoard, MLflow, Weights & Biases, Trackio and the others Accelerate supports.

Which trackers a run reports to is ``train.report_to``. Every one is checked before training starts: a
missing package, or a run the tracker cannot start, is a one-line UserError. Logging happens on the main
process only (Accelerate's ``log`` is main-process-only).
"""

from __future__ import annotations

from typing import Any

from accelerate import Accelerator
from accelerate.tracking import get_available_trackers

from addrop_cli.errors import UserError, first_line
from addrop_cli.recipe import Recipe, flatten
from addrop_cli.training.one_class import majority_share  # noqa: F401  (torch-free; the loop imports it from here)

PROJECT = "addrop"
# What to install for each tracker: an addrop extra where there is one, else the tracker's own package.
INSTALL = {"tensorboard": "'addrop[tensorboard]'", "mlflow": "'addrop[mlflow]'", "wandb": "'addrop[wandb]'",
           "trackio": "'addrop[trackio]'", "comet_ml": "comet-ml", "aim": "aim", "clearml": "clearml",
           "dvclive": "dvclive", "swanlab": "swanlab"}


def resolve_trackers(names: list[str]) -> list[str]:
    """``train.report_to`` as Accelerate tracker names: "all" means every one installed; a named tracker whose
    package is missing is a UserError saying what to install (Accelerate would skip it without a word)."""
    available = [str(tracker) for tracker in get_available_trackers()]
    if "all" in names:
        return available
    missing = [name for name in names if name not in available]
    if missing:
        raise UserError(f"train.report_to: {missing[0]} is not installed: pip install {INSTALL[missing[0]]}")
    return names


def flat_config(values: dict[str, Any]) -> dict[str, Any]:
    """The resolved recipe as one level of dotted keys with scalar values (what every tracker accepts)."""
    return {key: value if isinstance(value, (int, float, str, bool)) else str(value)
            for key, value in flatten(values).items()}


def start_trackers(accelerator: Accelerator, recipe: Recipe, run_name: str) -> None:
    """Start every tracker's run with the resolved recipe as its config; UserError when one cannot start."""
    if not accelerator.log_with:
        return
    kwargs = {"wandb": {"name": run_name}, "mlflow": {"run_name": run_name}, "trackio": {"name": run_name}}
    try:
        accelerator.init_trackers(PROJECT, config=flat_config(recipe.to_dict()), init_kwargs=kwargs)
    except Exception as error:  # any tracker's failure to start, reported on one line
        names = ", ".join(str(tracker) for tracker in accelerator.log_with)
        raise UserError(f"train.report_to: could not start the {names} run: {first_line(error)}") from None


def finish_trackers(trackers: list) -> None:
    """End every tracker's run (what ``Accelerator.end_training`` does, without destroying the process group)."""
    for tracker in trackers:
        tracker.finish()
