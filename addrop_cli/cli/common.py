"""What every command shares: turning UserError into one line and exit code 2, quiet libraries."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from addrop_cli.config import load_yaml, merge, nest
from addrop_cli.errors import UserError
from addrop_cli.recipes import resolve_recipe

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


def nested(flags: dict[str, Any]) -> dict[str, Any]:
    """``{"train.lr": 1e-5, "task": None}`` -> ``{"train": {"lr": 1e-5}}``: only flags the user gave."""
    out: dict[str, Any] = {}
    for key, value in flags.items():
        if value is not None:
            out = merge(out, nest(key, value))
    return out


def checkpoint_recipe(checkpoint: str, recipe: str | None, task: str | None) -> dict[str, Any]:
    """The recipe saved beside a checkpoint directory, unless --recipe or --task says otherwise."""
    if recipe is not None or task is not None:
        return resolve_recipe(recipe, task).to_dict()
    saved = Path(checkpoint) / "recipe.yaml"
    if not saved.is_file():
        raise UserError(f"{checkpoint} has no recipe.yaml; pass --task NAME or --recipe NAME|PATH")
    return load_yaml(saved)
