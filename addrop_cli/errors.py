"""The one exception type for problems with what the user gave us."""


class UserError(Exception):
    """Bad input from the user: a file, a recipe key, a value, a model.

    The message names the offending key, value or file and says what would be valid. The CLI prints it
    on one line and exits with status 2; the library lets it propagate.
    """


# ``addrop train``'s exit status when the loss became non-finite (1 is any crash; 2 a UserError; 128 + N a
# stop by signal N after checkpointing): a sweep records such a trial as diverged instead of failing.
DIVERGED_EXIT_CODE = 3


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type name when empty), for one-line errors."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
