"""What every command shares: turning UserError into one line and exit code 2, quiet libraries."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from addrop_cli.errors import UserError
from addrop_cli.training.run_dir import model_dir

EXIT_USAGE = 2


def quiet_libraries() -> None:
    """Keep transformers/datasets chatter (progress bars, fresh-head warnings) off the terminal."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()


def option(*param_decls: str, help: str, metavar: str = "", recipe_default: bool = False, **kwargs: Any) -> Any:
    """``typer.Option`` with a plain metavar (``N``, ``FILE``; none for flags) instead of a type tag, and, for an
    option that falls back to the recipe when not given, ``[default: the recipe's]``."""
    if recipe_default:
        kwargs["show_default"] = "the recipe's"
    return typer.Option(*param_decls, help=help, metavar=metavar, **kwargs)


def reports_user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Print a UserError as ``error: ...`` on stderr and exit 2, without a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except UserError as error:
            print(f"error: {error}", file=sys.stderr)
            raise typer.Exit(EXIT_USAGE) from None

    return wrapper


def checkpoint_dir(path: Path) -> Path:
    """The model directory an ``--checkpoint`` names (see :func:`model_dir`); a UserError if it is no folder."""
    if not path.is_dir():
        raise UserError(f"checkpoint {path} is not a directory (give a run's best/ folder)")
    return Path(model_dir(str(path)))
