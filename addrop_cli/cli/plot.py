"""``addrop plot``: train and dev loss curves of several runs in one figure (paper Fig. 2)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from addrop_cli.cli.common import option, reports_user_errors
from addrop_cli.errors import UserError


@reports_user_errors
def plot(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run directories (each with the history.jsonl train writes).",
                                                   show_default=False)],
    output: Annotated[Path, option(metavar="FILE", help="Figure file: .png, .pdf or .svg.")],
    label: Annotated[list[str] | None, option(metavar="TEXT",
                                              help="Legend label per run, in order (default: folder names).")]
    = None,
) -> None:
    """Plot training and validation loss per epoch of several runs side by side, as in the paper's Fig. 2."""
    if label and len(label) != len(run_dirs):
        raise UserError(f"--label was given {len(label)} times for {len(run_dirs)} runs; give one per run or none")
    names = label or [run.resolve().name for run in run_dirs]
    if len(set(names)) != len(names):
        raise UserError(f"runs would share a legend label ({', '.join(names)}); name them with --label")
    from addrop_cli import plots  # matplotlib is imported only once the input is valid
    from addrop_cli.training.run_dir import read_history

    histories = {name: read_history(run, ("epoch", "train_loss"))
                 for name, run in zip(names, run_dirs, strict=True)}
    for run, rows in zip(run_dirs, histories.values(), strict=True):
        if not any("eval_loss" in row for row in rows):  # epochs train.eval_every skipped have none
            raise UserError(f"{run / 'history.jsonl'} has no evaluated epoch (no row has eval_loss): plot a run once "
                            "it has evaluated its validation split")
    plots.save_figure(plots.loss_curves(histories), output)
    Console(stderr=True).print(f"wrote {output}")
