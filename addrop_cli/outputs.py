"""Atomic writes: nothing half-written is ever left where a user (or a resumed run) would read it."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from addrop_cli.errors import UserError, write_failure


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn a failure of the file system while writing ``path`` (ENOSPC, EIO, EROFS, EDQUOT ..., also as the
    safetensors and torch writers report them) into :class:`~addrop_cli.errors.WriteFailed` naming ``path``."""
    try:
        yield
    except Exception as error:
        failure = write_failure(error, path)
        if failure is None or failure is error:
            raise
        raise failure from error


def write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same directory, then rename over ``path``."""
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes owner-only files; outputs get the usual permissions
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, value: Any) -> None:
    write_text(path, json.dumps(value, indent=2, sort_keys=False) + "\n")


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    write_text(path, "".join(json.dumps(row) + "\n" for row in rows))


def write_dir(path: Path, fill: Callable[[Path], None]) -> None:
    """Let ``fill`` populate a temporary sibling directory, then swap it in place of ``path``.

    The swap is two renames; a process killed between them leaves the previous directory as ``.<name>.old``,
    which :func:`recover_dir` puts back.
    """
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
        try:
            fill(tmp)
            os.chmod(tmp, 0o777 & ~_umask())  # as for write_bytes: mkdtemp makes an owner-only directory
            old = _old(path)
            shutil.rmtree(old, ignore_errors=True)
            if path.exists():
                os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def _old(path: Path) -> Path:
    return path.with_name(f".{path.name}.old")


def recover_dir(path: Path) -> None:
    """Finish a :func:`write_dir` of ``path`` that a killed process left: the previous directory back when the new
    one never arrived, and the temporary directories removed."""
    old = _old(path)
    if old.is_dir() and not path.exists():
        os.replace(old, path)
    shutil.rmtree(old, ignore_errors=True)
    for leftover in path.parent.glob(f".{path.name}.*.tmp"):
        shutil.rmtree(leftover, ignore_errors=True)


def existing_parent(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists: where a folder still to be made will be made."""
    path = Path(path).expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable_folder(path: Path, what: str) -> None:
    """A UserError naming ``what`` (``--output-dir``, ...) unless ``path`` is a folder, or can be made as one,
    that this process can write to; changes nothing."""
    found = existing_parent(path)
    if not found.is_dir():
        where = "is a file" if found == Path(path).expanduser().absolute() else f"is inside {found}, a file"
        raise UserError(f"{what} {path} {where}: give a folder (it is made if missing)")
    if os.statvfs(found).f_flag & os.ST_RDONLY:
        raise UserError(f"{what} {path} cannot be written: {found} is on a read-only file system; choose "
                        f"another {what}")
    if not os.access(found, os.W_OK | os.X_OK):
        raise UserError(f"{what} {path} cannot be written: {found} is not writable by this user; choose "
                        f"another {what}")
