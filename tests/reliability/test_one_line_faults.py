"""Every fault a user can cause is one ``error:`` line and an exit code, never a traceback (unless ADDROP_DEBUG)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from faults import in_tmpfs, one_error_line

from addrop_cli.errors import UserError

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}


def addrop(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "addrop_cli", *args], capture_output=True, text=True,
                          env=env or ENV, timeout=300)


def test_an_output_dir_that_is_a_file_is_one_line(tmp_path, tiny_checkpoint):
    from addrop_cli.recipe import resolve_recipe
    from addrop_cli.training.loop import train

    taken = tmp_path / "notes.txt"
    taken.write_text("mine")
    done = addrop("train", "--model", str(tiny_checkpoint), "--output-dir", str(taken))
    assert done.returncode == 2
    one_error_line(done.stderr, f"{taken} is a file", "give a folder")
    inside = taken / "run"  # the library says the same, before loading anything
    with pytest.raises(UserError, match=f"{inside} is inside {taken}, a file: give a folder"):
        train(resolve_recipe("demo", overrides=[f"model={tiny_checkpoint}", f"train.output_dir={inside}"]))
    assert taken.read_text() == "mine"


@pytest.mark.parametrize("seed", ["-5", "4294967296"])
def test_a_seed_outside_32_bits_is_one_line(tmp_path, seed):
    done = addrop("train", "--seed", seed, "--output-dir", str(tmp_path / "run"))
    assert done.returncode == 2
    one_error_line(done.stderr, f"train.seed={seed}", "from 0 to 4294967295")
    assert not (tmp_path / "run").exists()


def test_addrop_debug_shows_the_traceback(tmp_path):
    done = addrop("train", "--seed", "-5", "--output-dir", str(tmp_path / "run"),
                  env={**ENV, "ADDROP_DEBUG": "1"})
    assert done.returncode == 1
    assert "Traceback (most recent call last)" in done.stderr and "train.seed=-5 is invalid" in done.stderr


def test_a_read_only_output_folder_is_one_line(tmp_path, mount_namespace, tiny_checkpoint):
    mnt = tmp_path / "mnt"
    done = in_tmpfs(mnt, "1m", f'$ADDROP train --model {tiny_checkpoint} --output-dir "$MNT/run"; echo "exit $?"',
                    read_only=True)
    assert done.stdout.splitlines() == ["exit 2"], done.stderr
    one_error_line(done.stderr, f"{mnt / 'run'} cannot be written", "read-only file system")


def test_an_unwritable_cache_folder_for_assembled_models_is_one_line(tmp_path, mount_namespace):
    mnt = tmp_path / "mnt"
    done = in_tmpfs(mnt, "1m", '$ADDROP assemble mpnet-base --cache-dir "$MNT/cache"; echo "exit $?"',
                    read_only=True)
    assert done.stdout.splitlines() == ["exit 2"], done.stderr
    one_error_line(done.stderr, "cache folder", f"{mnt / 'cache'} cannot be written", "read-only file system")
