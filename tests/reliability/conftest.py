"""Faults made for real where this machine allows: a small tmpfs, or a read-only one, in a private mount namespace
(``unshare --mount``: root, or a kernel that lets users make namespaces); elsewhere the write layer is injected."""

from __future__ import annotations

import subprocess

import pytest


@pytest.fixture(scope="session")
def mount_namespace(tmp_path_factory) -> None:
    """Skip unless a tmpfs can be mounted in a private mount namespace (what the tmpfs tests need)."""
    target = tmp_path_factory.mktemp("probe")
    probe = subprocess.run(["unshare", "--mount", "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs {target}"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"no private mount namespace here (unshare --mount: {probe.stderr.strip()}); the injected "
                    "ENOSPC tests cover the write layer")
