"""Atomic writes leave finished files with the usual permissions and no temporary leftovers."""

from __future__ import annotations

import os
import stat

from addrop_cli.outputs import write_dir, write_text


def test_written_files_and_directories_follow_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        write_text(tmp_path / "a.txt", "x")
        write_dir(tmp_path / "d", lambda d: (d / "f").write_text("y"))
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "d"]
