"""What every command shares: each error a user can cause as one line and an exit code, quiet libraries."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from addrop_cli.errors import UserError, WriteFailed, first_line
from addrop_cli.training.run_dir import model_dir

EXIT_FAULT, EXIT_USAGE, EXIT_SIGINT = 1, 2, 130
DEBUG_ENV = "ADDROP_DEBUG"  # set to 1: errors a user can cause show their traceback as well


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
    """Print each error a user can cause as one ``error: ...`` line on stderr, without a traceback: bad input
    (UserError, exit 2), a file system that refuses a read or write (exit 1) and Ctrl-C before the work has
    its own handler (exit 130). Under ``torchrun`` only the main process prints bad input and Ctrl-C (every process
    meets them); a file-system error is printed by the process it happened in, prefixed with its rank unless it is
    the main one. ``ADDROP_DEBUG=1`` re-raises."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (UserError, WriteFailed, OSError, KeyboardInterrupt) as error:
            if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
                raise
            if isinstance(error, KeyboardInterrupt):
                say("interrupted")
                raise typer.Exit(EXIT_SIGINT) from None
            if isinstance(error, UserError):  # every process finds the same bad input: the main one says it
                say(f"error: {first_line(error)}")
                raise typer.Exit(EXIT_USAGE) from None
            # A file system can fail one process alone (its own RNG-state file): each says so, naming its rank.
            prefix = "" if is_main_rank() else f"[rank {os.environ['RANK']}] "
            print(f"{prefix}error: {first_line(error)}", file=sys.stderr)
            raise typer.Exit(EXIT_FAULT) from None

    return wrapper


def is_main_rank() -> bool:
    """Rank 0 of a ``torchrun`` launch, or a process launched alone (without importing torch)."""
    return os.environ.get("RANK", "0") == "0"


def say(line: str) -> None:
    """One line on stderr, from the main process only (``torchrun`` runs the command once per process)."""
    if is_main_rank():
        print(line, file=sys.stderr)


def checkpoint_dir(path: Path) -> Path:
    """The model directory an ``--checkpoint`` names (see :func:`model_dir`); a UserError if it is no folder."""
    if not path.is_dir():
        raise UserError(f"checkpoint {path} is not a directory (give a run's best/ folder)")
    return Path(model_dir(str(path)))
