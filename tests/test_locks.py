"""Directory locks: a live holder refuses, a dead or reused pid is taken over, another host is refused."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

from helpers import one_line_error, plant_lock

from addrop_cli import locks


def test_lock_is_taken_released_and_refused_while_held(tmp_path):
    path = tmp_path / "run" / locks.TRAIN_LOCK
    with locks.held(path, "training"):
        holder = json.loads(path.read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        message = one_line_error(lambda: locks.acquire(path, "training"), f"{path.parent} is in use",
                                 f"pid {os.getpid()}", str(path))
        assert "delete that file if the process is gone" in message
    assert not path.exists()
    assert not path.parent.exists()  # made for the lock alone and left empty: removed again


def test_a_live_process_on_this_host_keeps_its_lock(tmp_path, live_process):
    path = tmp_path / locks.SWEEP_LOCK
    plant_lock(path, live_process.pid)
    one_line_error(lambda: locks.acquire(path, "a sweep"), f"a sweep run by pid {live_process.pid}")


def test_dead_and_reused_pids_are_stale(tmp_path, live_process):
    path = tmp_path / locks.SWEEP_LOCK
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True)
    plant_lock(path, int(finished.stdout))  # that process has ended
    holder = locks.acquire(path, "a sweep")
    assert json.loads(path.read_text()) == holder
    locks.release(path, holder)
    plant_lock(path, live_process.pid, pid_started="1")  # the pid lives on, but in a process started later
    assert locks.acquire(path, "a sweep")["pid"] == os.getpid()


def test_a_zombie_holder_has_ended(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 10
        while locks._stat(child.pid)[0] != "Z":  # wait until it has ended, not yet reaped
            assert time.monotonic() < deadline
            time.sleep(0.01)
        plant_lock(tmp_path / locks.TRAIN_LOCK, child.pid)
        assert locks.acquire(tmp_path / locks.TRAIN_LOCK, "training")["pid"] == os.getpid()
    finally:
        child.wait()


def test_another_hosts_lock_is_refused_and_can_be_broken(tmp_path):
    path = tmp_path / locks.TRAIN_LOCK
    plant_lock(path, 1, host="node-7")
    one_line_error(lambda: locks.acquire(path, "training"), "pid 1 on node-7")
    locks.break_lock(path)
    holder = locks.acquire(path, "training")
    plant_lock(path, 2, host="node-8")  # broken and retaken elsewhere: the old holder leaves it alone
    locks.release(path, holder)
    assert json.loads(path.read_text())["host"] == "node-8"


def test_a_folder_without_hard_links_still_gets_its_lock(tmp_path, monkeypatch):
    def refuse(*args):
        raise PermissionError("hard links are not supported here")

    monkeypatch.setattr(os, "link", refuse)
    path = tmp_path / locks.SWEEP_LOCK
    holder = locks.acquire(path, "a sweep")
    assert json.loads(path.read_text()) == holder
    one_line_error(lambda: locks.acquire(path, "a sweep"), f"pid {os.getpid()}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [locks.SWEEP_LOCK]  # no staged file left behind
