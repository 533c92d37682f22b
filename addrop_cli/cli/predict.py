"""``addrop predict``: a checkpoint's predictions for a file, as JSON Lines or CSV."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from rich.console import Console
from rich.table import Table

from addrop_cli.cli import recipe_options as options
from addrop_cli.cli.common import checkpoint_dir, option, quiet_libraries, reports_user_errors
from addrop_cli.recipe import resolve_recipe
from addrop_cli.training.run_dir import recipe_path

SHOWN_ROWS = 5


@reports_user_errors
def predict(
    checkpoint: options.Checkpoint,
    input_file: Annotated[str, option(metavar="FILE", help="Examples in any format train reads, with or without "
                                      "labels (translation: the source-language file alone will do).")],
    output: Annotated[Path, option(metavar="FILE", help="Where the predictions go: .jsonl or .csv.")]
    = Path("predictions.jsonl"),
    task: options.CheckpointTask = None,
    recipe: options.CheckpointRecipe = None,
    set_: options.Overrides = None,
) -> None:
    """Predict labels (and probabilities), tags or translations for every example of a file."""
    quiet_libraries()
    checkpoint = checkpoint_dir(checkpoint)
    from addrop_cli.predict import check_output, predict_checkpoint, write_predictions  # torch once input is valid
    from addrop_cli.training.process_group import ending_process_group, is_main_process

    check_output(output)
    resolved = resolve_recipe(recipe, task, {"data.test_file": input_file}, set_, saved=recipe_path(checkpoint),
                              unset=("data.max_eval_samples",))
    with ending_process_group():
        rows = predict_checkpoint(str(checkpoint), resolved)
    if not is_main_process():  # under torchrun every process predicted its shard; the main one writes all of them
        return
    write_predictions(output, rows)
    table = Table(title=f"{resolved.task} — first {min(len(rows), SHOWN_ROWS)} of {len(rows)} predictions",
                  title_justify="left")
    columns = [key for key in rows[0] if key != "probabilities"]
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows[:SHOWN_ROWS]:
        table.add_row(*(" ".join(map(str, row[c])) if isinstance(row[c], list) else str(row[c]) for c in columns))
    Console(stderr=True).print(table)
    Console(stderr=True).print(f"wrote {output}")
