"""``addrop eval``: score a saved checkpoint and write the metrics as JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from rich.console import Console
from rich.table import Table

from addrop_cli.cli import recipe_options as options
from addrop_cli.cli.common import checkpoint_dir, option, quiet_libraries, reports_user_errors
from addrop_cli.errors import UserError
from addrop_cli.outputs import write_json
from addrop_cli.recipe import resolve_recipe
from addrop_cli.tasks.ood_data import OOD_SETS
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
    dataset_config: Annotated[str | None, option(metavar="NAME", help="hans/paws/paws-x from the Hub: the "
                                                 "dataset config (PAWS-X language, default en).")] = None,
    set_: options.Overrides = None,
) -> None:
    """Evaluate a checkpoint: prints a metrics table and writes JSON. --task hans|paws|paws-x scores it out of
    distribution (paper Table 6), its labels mapped onto the set's by name."""
    quiet_libraries()
    checkpoint = checkpoint_dir(checkpoint)
    if dataset_config is not None and (task not in OOD_SETS or validation_file is not None):
        raise UserError(f"--dataset-config {dataset_config}: only for --task {'|'.join(OOD_SETS)} read from the Hub "
                        "(not with --validation-file)")
    if task in OOD_SETS:
        resolved = resolve_recipe(recipe, None, {}, set_, saved=recipe_path(checkpoint))
        _evaluate_ood(checkpoint, resolved, task, validation_file, dataset_config, max_eval_samples, output)
        return
    flags = {"data.validation_file": validation_file, "data.max_eval_samples": max_eval_samples}
    # The training run's sample limit does not carry over: eval scores the whole split unless told otherwise.
    resolved = resolve_recipe(recipe, task, flags, set_, saved=recipe_path(checkpoint),
                              unset=("data.max_eval_samples",))
    from addrop_cli.training.evaluation import evaluate_checkpoint  # torch is imported only once input is valid
    from addrop_cli.training.process_group import ending_process_group, is_main_process

    with ending_process_group():
        result = evaluate_checkpoint(str(checkpoint), resolved)
    if not is_main_process():  # under torchrun every process scored its shard; the main one reports all of them
        return
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


def _evaluate_ood(checkpoint: Path, recipe, task: str, file: str | None, config: str | None,
                  max_examples: int | None, output: Path | None) -> None:
    from addrop_cli.ood import evaluate_ood  # torch is imported only once input is valid
    from addrop_cli.training.process_group import ending_process_group, is_main_process

    with ending_process_group():
        result = evaluate_ood(str(checkpoint), recipe, task, Path(file) if file else None, config, max_examples)
    if not is_main_process():
        return
    table = Table(title=f"{task} — {checkpoint} ({recipe.task} labels mapped by name)")
    labels = OOD_SETS[task].labels if result.by_heuristic else ["accuracy"]
    table.add_column("heuristic" if result.by_heuristic else "set")
    for label in labels:
        table.add_column(label, justify="right")
    for heuristic, cells in result.by_heuristic.items():
        table.add_row(heuristic, *(f"{cells[label]:.4f}" if label in cells else "–" for label in labels))
    table.add_row("all", f"{result.accuracy:.4f} ({result.count} examples)")
    Console().print(table)
    destination = output or checkpoint / f"eval_{task}.json"
    write_json(destination, {"checkpoint": str(checkpoint), **result.to_json()})
    Console(stderr=True).print(f"wrote {destination}")
