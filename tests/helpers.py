"""Small helpers shared by the tests."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from addrop_cli.errors import UserError

if TYPE_CHECKING:
    from addrop_cli.recipe import Recipe


def demo_recipe(checkpoint: Path, out: Path, *overrides: str) -> Recipe:
    """The bundled demo recipe on a tiny checkpoint, cut to 16 training and 16 evaluation sentences, writing to
    ``out``."""
    from addrop_cli.recipe import resolve_recipe  # on use: the many tests importing these helpers load no recipes

    return resolve_recipe("demo", overrides=[f"model={checkpoint}", f"train.output_dir={out}",
                                             "data.max_train_samples=16", "data.max_eval_samples=16", *overrides])


def write(path: Path, text: str) -> Path:
    """Write `text` byte for byte (no newline translation) and return the path."""
    path.write_bytes(text.encode("utf-8"))
    return path


def one_line_error(call, *parts: str) -> str:
    """Run `call`, expecting a UserError on one line that contains every part; return its message."""
    with pytest.raises(UserError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"
    return message


def run_without_addrop(code: str) -> subprocess.CompletedProcess:
    """Run Python ``code`` in a fresh interpreter where ``import addrop_cli`` fails (plain transformers only)."""
    return subprocess.run([sys.executable, "-c", "import sys; sys.modules['addrop_cli'] = None\n" + code],
                          capture_output=True, text=True)


def plant_lock(path: Path, pid: int, **holder) -> None:
    """A lock file as a process ``pid`` on this host would have written it (``holder`` overrides fields)."""
    import json
    import socket
    import time

    from addrop_cli.locks import _start_time

    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"host": socket.gethostname(), "pid": pid, "pid_started": _start_time(pid), "since": time.time()}
    path.write_text(json.dumps({**record, **holder}))


def tree_hash(root: Path) -> dict[str, str]:
    """Every file and folder under ``root`` (hidden ones too): relative path -> SHA-256 of its bytes (or 'dir')."""
    return {str(path.relative_to(root)): "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*"))}


def wait_for(condition, seconds: float, what: str):
    """Poll ``condition`` until it holds, returning its value (a state to wait for, never a fixed sleep); fail
    after ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {seconds} s waiting for {what}")
