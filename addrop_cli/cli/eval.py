"""``addrop eval``: score a saved checkpoint and write the metrics as JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from rich.console import Console
from rich.table import Table

from addrop_cli.cli import recipe_options as options
from addrop_cli.cli.common import checkpoint_dir, option, quiet_libraries, reports_user_errors
from addrop_cli.outputs import write_json
from addrop_cli.recipe import resolve_recipe
from addrop_cli.training.run_dir import recipe_path


@reports_user_errors
def evaluate(
    checkpoint: options.Checkpoint,
    task: options.CheckpointTask = None,
    recipe: options.CheckpointRecipe = None,
    validation_file: Annotated[str | None, option(metavar="FILE", help="Data to score (default: the recipe's "
                                                  "validation data).")] = None,
    max_eval_samples: Annotated[int | None, option(metavar="N", help="Score only the first N examples (default: "
                                                   "the whole split).")] = None,
    output: Annotated[Path | None, option(metavar="FILE",
                                          help="JSON file for the metrics (default CHECKPOINT/eval_results.json).")]
    = None,
    set_: options.Overrides = None,
) -> None:
    """Evaluate a checkpoint: prints a metrics table and writes JSON."""
    quiet_libraries()
    checkpoint = checkpoint_dir(checkpoint)
    flags = {"data.validation_file": validation_file, "data.max_eval_samples": max_eval_samples}
    # The training run's sample limit does not carry over: eval scores the whole split unless told otherwise.
    resolved = resolve_recipe(recipe, task, flags, set_, saved=recipe_path(checkpoint),
                              unset=("data.max_eval_samples",))
    from addrop_cli.training.evaluation import evaluate_checkpoint  # torch is imported only once input is valid

    result = evaluate_checkpoint(str(checkpoint), resolved)
    table = Table(title=f"{resolved.task} — {checkpoint}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in result.metrics.items():
        table.add_row(name, f"{value:.4f}")
    table.add_row("loss", f"{result.loss:.4f}")
    table.add_row("examples", str(result.count))
    Console().print(table)
    destination = output or checkpoint / "eval_results.json"
    write_json(destination, {"task": resolved.task, "checkpoint": str(checkpoint), "eval": result.metrics,
                             "eval_loss": result.loss, "eval_examples": result.count,
                             "eval_predictions": result.prediction_counts})
    Console(stderr=True).print(f"wrote {destination}")
