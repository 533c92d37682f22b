"""Directory locks: one live ``addrop sweep`` driver per sweep directory, one live ``addrop train`` per output
directory.

A lock is a small JSON file naming its holder (host, pid, the pid's start time, since when). It is created
with ``link(2)`` from a complete temporary file, so it appears whole or not at all (atomic on local file
systems and NFS alike); where hard links are refused, by an exclusive create. A lock whose holder ran on
this host and is gone (no such pid, a zombie, or the pid now belongs to a process started later) is stale and
taken over; a lock held from another host cannot be checked from here, so it is refused with the path to
delete once that process is known to be gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from addrop_cli.errors import UserError
from addrop_cli.outputs import write_text

SWEEP_LOCK, TRAIN_LOCK = "sweep.lock", "train.lock"


def _stat(pid: int) -> list[str] | None:
    """``/proc/PID/stat`` from field 3 (the state) on; None off Linux or without such a process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()  # the name may hold spaces
    except OSError:
        return None


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (``/proc/PID/stat`` field 22); None off Linux."""
    stat = _stat(pid)
    return None if stat is None else stat[19]


def _alive(holder: dict[str, Any]) -> bool:
    """Whether a holder on this host is still running (and is the same process, not a reused pid)."""
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        pass
    stat = _stat(pid)
    if stat is None:  # gone since it answered, or no /proc here (then the answer stands)
        return not Path("/proc/self/stat").is_file()
    started = holder.get("pid_started")
    return stat[0] != "Z" and (started is None or stat[19] == started)  # a zombie has ended


def read_holder(path: Path) -> dict[str, Any] | None:
    """The lock's holder, or None when there is no lock (an unreadable one reads as an unknown holder)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}


def _describe(holder: dict[str, Any]) -> str:
    since = holder.get("since")
    when = time.strftime(" since %Y-%m-%d %H:%M:%S", time.localtime(since)) if isinstance(since, float) else ""
    return f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}{when}"


def _create(path: Path, holder: dict[str, Any]) -> bool:
    """Create the lock holding ``holder``; False when a lock is already there."""
    text = json.dumps(holder) + "\n"
    staged = path.with_name(f".{path.name}.{uuid.uuid4().hex}.new")  # unique across hosts sharing the folder
    write_text(staged, text)
    try:
        os.link(staged, path)
        return True
    except FileExistsError:
        return False
    except OSError:  # no hard links here (some bucket mounts): exclusive create, written right after
        return _create_exclusive(path, text)
    finally:
        staged.unlink(missing_ok=True)


def _create_exclusive(path: Path, text: str) -> bool:
    try:
        descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(text)
    return True


def acquire(path: Path, what: str) -> dict[str, Any]:
    """Take the lock at ``path`` for this process; ``what`` names the work for the error (``"a sweep"``).

    Raises UserError when a live process holds it. Returns the holder record written.
    """
    holder = {"host": socket.gethostname(), "pid": os.getpid(), "pid_started": _start_time(os.getpid()),
              "since": time.time()}
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(3):  # lost races with another process taking over the same stale lock
        if _create(path, holder):
            return holder
        current = read_holder(path)
        if current is None:
            continue
        if current.get("host") != holder["host"] or _alive(current):
            raise UserError(f"{path.parent} is in use: {what} run by {_describe(current)} holds {path}; wait for it "
                            "to finish, or delete that file if the process is gone")
        _remove_stale(path, current)
    raise UserError(f"could not take {path}: other processes kept taking it; try again")


def _remove_stale(path: Path, stale: dict[str, Any]) -> None:
    """Move the stale lock aside and delete it; if another process had just replaced it, put theirs back."""
    aside = path.with_name(f".{path.name}.{os.getpid()}.stale")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    if read_holder(aside) != stale:
        with contextlib.suppress(FileExistsError):
            os.link(aside, path)
    aside.unlink(missing_ok=True)


def break_lock(path: Path) -> None:
    """Remove a lock whatever holds it: for a sweep driver retrying a trial whose attempt it knows is lost."""
    path.unlink(missing_ok=True)


def release(path: Path, holder: dict[str, Any]) -> None:
    """Remove the lock if it is still the one ``holder`` wrote (a broken and retaken lock is left alone)."""
    if read_holder(path) == holder:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def held(path: Path, what: str) -> Iterator[None]:
    """Hold the lock at ``path`` while the block runs. A directory made for the lock alone is removed again
    when the block leaves it empty (a run refused at its first check leaves nothing behind)."""
    made = not path.parent.exists()
    holder = acquire(path, what)
    try:
        yield
    finally:
        release(path, holder)
        if made:
            with contextlib.suppress(OSError):  # not empty: the run wrote there
                path.parent.rmdir()
