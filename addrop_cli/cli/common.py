"""What every command shares: turning UserError into one line and exit code 2, quiet libraries."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any

import typer

from addrop_cli.errors import UserError

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
