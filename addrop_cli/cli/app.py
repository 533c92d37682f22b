"""The ``addrop`` Typer app: one command per module of this folder."""

from __future__ import annotations

import typer

from addrop_cli.cli import attribute as attribute_command
from addrop_cli.cli import eval as eval_command
from addrop_cli.cli import plot as plot_command
from addrop_cli.cli import sweep as sweep_command
from addrop_cli.cli import train as train_command

app = typer.Typer(
    name="addrop",
    help="AD-DROP (attribution-driven dropout) fine-tuning for Hugging Face transformers.",
    no_args_is_help=False,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("train")(train_command.train)
app.command("eval")(eval_command.evaluate)
app.command("sweep")(sweep_command.sweep)
app.command("attribute")(attribute_command.attribute)
app.command("plot")(plot_command.plot)


def main() -> None:
    app(prog_name="addrop")
