"""Helpers of the fault tests: a command in a private mount namespace with a tmpfs, and its one error line."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path


def in_tmpfs(mount_point: Path, size: str, script: str, *, read_only: bool = False,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the shell ``script`` in a private mount namespace where ``mount_point`` is a new tmpfs of ``size``
    (``$MNT`` in the script; ``$ADDROP`` runs this Python's addrop); the tmpfs goes when the script ends."""
    mount_point.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    setup = (f"set -u; MNT={shlex.quote(str(mount_point))}; ADDROP='{shlex.quote(sys.executable)} -m addrop_cli'; "
             f'mount -t tmpfs -o {options} tmpfs "$MNT" || exit 99; ')
    return subprocess.run(["unshare", "--mount", "bash", "-c", setup + script], capture_output=True, text=True,
                          timeout=600, env=env)


def one_error_line(stderr: str, *parts: str) -> str:
    """The single ``error:`` line of a command's stderr (nothing like a traceback), holding every part."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, stderr
    for part in parts:
        assert part in lines[0], f"{part!r} not in {lines[0]!r}"
    return lines[0]
