"""``addrop attribute``: attribution heatmaps with candidate regions and dropped positions (paper Fig. 1)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from rich.console import Console
from rich.table import Table

from addrop_cli.cli import recipe_options as options
from addrop_cli.cli.common import option, quiet_libraries, reports_user_errors
from addrop_cli.errors import UserError
from addrop_cli.recipe import resolve_recipe
from addrop_cli.tasks.registry import task_kind
from addrop_cli.training.run_dir import model_dir, recipe_path

METHODS = ("ga", "iga", "aa")


def parse_heads(heads: str) -> list[int] | None:
    """``mean`` -> None (every head, figures average them); ``0,3`` -> [0, 3]."""
    if heads.strip() == "mean":
        return None
    parts = [part.strip() for part in heads.split(",")]
    if not all(part.isdigit() for part in parts):
        raise UserError(f"--heads {heads!r} is invalid: give mean or head indices such as 0 or 0,3")
    return sorted({int(part) for part in parts})


@reports_user_errors
def attribute(
    checkpoint: Annotated[str, option(metavar="DIR",
                                      help="A checkpoint directory (e.g. RUN/best), a model alias or a hub id.")],
    text: Annotated[str | None, option(metavar="TEXT", help="A sentence of your own to attribute.")] = None,
    text_pair: Annotated[str | None, option(metavar="TEXT",
                                            help="Its second sentence, for sentence-pair tasks.")] = None,
    input_file: Annotated[str | None, option(metavar="FILE",
                                             help="Examples in any format train reads (labels optional).")] = None,
    max_examples: Annotated[int, option(metavar="N", help="Attribute the first N examples of --input-file.")] = 8,
    method: Annotated[str, option(metavar="ga|iga|aa",
                                  help="Attribution: ga (gradient), iga (integrated gradient) or aa (attention).")]
    = "ga",
    labels: Annotated[str, option(metavar="pseudo|gold",
                                  help="Attribute to the pseudo (predicted) label or the gold label.")] = "pseudo",
    layers: Annotated[str, option(metavar="first|all|0,3,5",
                                  help="Encoder layers: first, all, or indices like 0,3,5.")] = "all",
    heads: Annotated[str, option(metavar="mean|0,3",
                                 help="Heads in the figures and tensors: mean (all, averaged) or indices like 0,3.")]
    = "mean",
    p: Annotated[float | None, option("--p", metavar="P",
                                      help="Candidate share p (default: the checkpoint recipe's).")] = None,
    q: Annotated[float | None, option("--q", metavar="Q",
                                      help="Drop rate q (default: the checkpoint recipe's).")] = None,
    seed: Annotated[int, option(metavar="N", help="Seed of the sampled drop mask.")] = 42,
    max_tokens: Annotated[int, option(metavar="N", help="Figures show at most the first N tokens (generation: the last "
                                        "N, where the answer is).")] = 40,
    output_dir: Annotated[Path, option(metavar="DIR",
                                       help="Where the report goes (replaced if it holds an earlier one).")]
    = Path("outputs/attribute"),
    task: options.CheckpointTask = None,
    recipe: options.CheckpointRecipe = None,
    set_: options.Overrides = None,
) -> None:
    """Attribute inputs: heatmaps, candidate regions and dropped positions per layer, and an index.html."""
    quiet_libraries()
    if (text is None) == (input_file is None):
        raise UserError("give either --text \"a sentence\" or --input-file F, not both and not neither")
    if text_pair is not None and text is None:
        raise UserError("--text-pair goes with --text (an --input-file carries its own sentence pairs)")
    if method not in METHODS:
        raise UserError(f"--method {method!r} is invalid: choose one of {', '.join(METHODS)}")
    if max_examples < 1 or max_tokens < 2:
        raise UserError(f"--max-examples {max_examples} / --max-tokens {max_tokens} is invalid: use at least 1 / 2")
    head_indices = parse_heads(heads)
    flags = {"data.test_file": input_file, "data.max_eval_samples": max_examples, "addrop.enabled": True,
             "addrop.attribution": method, "addrop.labels": labels, "addrop.layers": layers, "addrop.p": p,
             "addrop.q": q, "addrop.strategy": "high", "addrop.attention": "auto"}
    checkpoint = model_dir(checkpoint)
    resolved = resolve_recipe(recipe, task, flags, set_, saved=recipe_path(checkpoint))
    from addrop_cli.attribute import (  # torch only once the input is valid
        attribute_checkpoint,
        describe_gold,
        describe_prediction,
        write_report,
    )

    examples = attribute_checkpoint(checkpoint, resolved, text=text, text_pair=text_pair, heads=head_indices,
                                    seed=seed)
    settings = {"checkpoint": checkpoint, "task": resolved.task, "task_type": task_kind(resolved),
                "method": method, "labels": labels, "layers": [layer.layer for layer in examples[0].layers],
                "heads": "mean" if head_indices is None else head_indices, "p": resolved.addrop.p,
                "q": resolved.addrop.q, "seed": seed}
    write_report(output_dir, examples, settings, max_tokens)
    table = Table(title=f"{len(examples)} example(s), layers {', '.join(map(str, settings['layers']))}",
                  title_justify="left")
    for column in ("example", "text", "prediction", "gold"):
        table.add_column(column, overflow="fold")
    for i, example in enumerate(examples):
        table.add_row(str(i), example.text, describe_prediction(example.prediction),
                      "" if example.gold is None else describe_gold(example.gold))
    console = Console(stderr=True)
    console.print(table)
    console.print(f"open {output_dir / 'index.html'}")
