"""The exception types for what a user can cause: bad input (:class:`UserError`) and a failing environment
(:class:`WriteFailed`)."""

from __future__ import annotations

import errno
import os
import re
import shutil


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


class WriteFailed(Exception):
    """Writing an output failed in the environment (a full disk, a read-only or failing file system, a quota):
    the CLI prints one line naming the path and the errno, and exits with status 1."""

    def __init__(self, path: object, code: int | None, detail: str, advice: str = ""):
        self.path, self.code, self.detail, self.advice = path, code, detail, advice
        reason = f"{errno.errorcode.get(code, code)} ({os.strerror(code)})" if code is not None else detail
        super().__init__(f"could not write {path}: {reason}" + (f"; {advice}" if advice else ""))

    def __reduce__(self):  # picklable with its fields (a Ray task or a subprocess may raise it)
        return WriteFailed, (self.path, self.code, self.detail, self.advice)

    def advised(self, advice: str) -> WriteFailed:
        """The same failure, saying what to do next."""
        return WriteFailed(self.path, self.code, self.detail, advice)


# Writers that drop the errno: safetensors (Rust) says "(os error 28)", torch's zip writer "strerror: <text>" or,
# for a short write, only "unexpected pos"/"file write failed".
_OS_ERROR_CODE = re.compile(r"\(os error (\d+)\)")
_STRERROR = re.compile(r"strerror: (.+?)\s*$")
_SHORT_WRITE = ("unexpected pos", "file write failed")
# Under this much free space a short write is taken for a full disk (the writers above never say so themselves).
NEARLY_FULL_BYTES = 64 << 20


def write_failure(error: BaseException, path: object) -> WriteFailed | None:
    """``error`` raised while writing ``path`` as a :class:`WriteFailed` when the file system caused it (an
    OSError, or the same failure as the safetensors and torch writers report it), else None (a bug: re-raise)."""
    if isinstance(error, WriteFailed):
        return error
    text = str(error)
    if isinstance(error, OSError):
        return WriteFailed(path, error.errno, first_line(error))
    if type(error).__name__ == "SafetensorError" and (match := _OS_ERROR_CODE.search(text)):
        return WriteFailed(path, int(match.group(1)), first_line(error))
    if isinstance(error, RuntimeError) and "inline_container" in text:
        if match := _STRERROR.search(text):
            codes = [code for code in errno.errorcode if os.strerror(code) == match.group(1)]
            return WriteFailed(path, codes[0] if codes else None, first_line(error))
        if any(marker in text for marker in _SHORT_WRITE):
            return WriteFailed(path, errno.ENOSPC if _free_bytes(path) < NEARLY_FULL_BYTES else None, first_line(error))
    return None


def _free_bytes(path: object) -> int:
    folder = os.path.dirname(os.fspath(path)) or "."
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return 0
