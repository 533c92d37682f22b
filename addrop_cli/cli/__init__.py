"""The ``addrop`` command line: one thin module per command, each parsing, validating and calling the
library; this package assembles them into the Typer ``app``."""

from __future__ import annotations

from typing import Annotated

import typer

from addrop_cli.cli import assemble as assemble_command
from addrop_cli.cli import attribute as attribute_command
from addrop_cli.cli import eval as eval_command
from addrop_cli.cli import plot as plot_command
from addrop_cli.cli import predict as predict_command
from addrop_cli.cli import sweep as sweep_command
from addrop_cli.cli import train as train_command
from addrop_cli.version import __version__

app = typer.Typer(
    name="addrop",
    help="AD-DROP (attribution-driven dropout) fine-tuning for Hugging Face transformers.",
    no_args_is_help=False,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _show_version(value: bool) -> None:
    if value:
        print(f"addrop {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[bool, typer.Option("--version", metavar="", help="Print the version and exit.",
                                          callback=_show_version, is_eager=True)] = False,
) -> None:
    """AD-DROP (attribution-driven dropout) fine-tuning for Hugging Face transformers."""


app.command("train")(train_command.train)
app.command("eval")(eval_command.evaluate)
app.command("predict")(predict_command.predict)
app.command("sweep")(sweep_command.sweep)
app.command("attribute")(attribute_command.attribute)
app.command("plot")(plot_command.plot)
app.command("assemble")(assemble_command.assemble)


def main() -> None:
    app(prog_name="addrop")
