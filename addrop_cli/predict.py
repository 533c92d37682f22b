"""The ``addrop predict`` engine: a fine-tuned checkpoint's predictions for a file, labelled or not
(run_glue's ``do_predict``), written as JSON Lines or CSV."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from addrop_cli.errors import UserError
from addrop_cli.outputs import write_text
from addrop_cli.recipe import Recipe
from addrop_cli.tasks.pipelines import pipeline_for
from addrop_cli.training.evaluation import predict_items

OUTPUT_FORMATS = (".jsonl", ".csv")


def predict_checkpoint(checkpoint: str, recipe: Recipe) -> list[dict[str, Any]]:
    """One row per example of the recipe's test split (``data.test_file``), in file order.

    Sequence tasks give the label and each class's probability (the score for regression), token tasks a tag
    per word, translation the translated sentence. Labels in the file, if any, are ignored.
    """
    items = pipeline_for(recipe).read(recipe, "test")
    if not items:
        raise UserError("give the examples to predict with --input-file")
    return predict_items(checkpoint, recipe, items)


def check_output(path: Path) -> None:
    if path.suffix.lower() not in OUTPUT_FORMATS:
        raise UserError(f"--output {path}: unsupported format {path.suffix or '(no suffix)'!r}; valid: "
                        + ", ".join(OUTPUT_FORMATS))


def write_predictions(path: Path, rows: list[dict[str, Any]]) -> None:
    """JSON Lines (one object per row, as returned) or CSV (lists joined by spaces, one column per class
    probability as ``p_<label>``), written atomically."""
    check_output(path)
    if path.suffix.lower() == ".jsonl":
        write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        return
    flat = [_flat_row(row) for row in rows]
    columns = list(dict.fromkeys(key for row in flat for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(flat)
    write_text(path, buffer.getvalue())


def _flat_row(row: dict[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, dict):
            flat.update({f"p_{name}": probability for name, probability in value.items()})
        elif isinstance(value, list):
            flat[key] = " ".join(map(str, value))
        else:
            flat[key] = value
    return flat
