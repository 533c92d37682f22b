"""``addrop sweep --backend ray`` on a real two-node Ray cluster on 127.0.0.1, with a trial's worker killed.

Runs only inside a private network and PID namespace (``.ci/run`` runs it under
``unshare --net --pid --fork --mount-proc`` with the loopback up), so every Ray server binds to 127.0.0.1,
nothing leaves the machine, and every process of the test can be listed and is gone at the end.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from helpers import wait_for
from test_sweep import ONE_THREAD, RETRY_GRID, assert_same_trials, finished_rows, learnable_sweep_args

INITIAL_PID_NAMESPACE = "pid:[4026531836]"  # the kernel's fixed inode for the host's PID namespace


def _isolated() -> bool:
    interfaces = [name for _, name in socket.if_nameindex()]
    return interfaces == ["lo"] and os.readlink("/proc/self/ns/pid") != INITIAL_PID_NAMESPACE


pytestmark = [
    pytest.mark.ray,
    pytest.mark.skipif(shutil.which("ray") is None, reason="Ray is not installed (pip install -e '.[test,ray]')"),
    pytest.mark.skipif(not _isolated(), reason="needs a private network and PID namespace: run under "
                       "'unshare --net --pid --fork --mount-proc' with the loopback up, as .ci/run does"),
]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _live_processes() -> set[int]:
    """Every live process in this PID namespace (zombies excluded)."""
    return {int(entry) for entry in os.listdir("/proc") if entry.isdigit() and _state(int(entry)) not in (None, "Z")}


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def _state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


@pytest.fixture
def cluster(monkeypatch):
    """A head node (2 CPUs, 1 declared GPU) and a second node (1 CPU, 1 declared GPU) on 127.0.0.1."""
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths have a length limit
    # A home of its own for the cluster and the sweep driver: a stray ~/.ray/auth_token makes the head
    # require a token the nodes are not given.
    monkeypatch.setenv("HOME", temp)
    address = f"127.0.0.1:{_free_port()}"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    common = ["--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    before = _live_processes()
    try:
        _ray_start(["--head", f"--port={address.split(':')[1]}", "--num-cpus=2", "--num-gpus=1",
                    "--include-dashboard=false", f"--temp-dir={temp}", *common], env)
        _ray_start([f"--address={address}", "--num-cpus=1", "--num-gpus=1", *common], env)
        yield address
    finally:
        subprocess.run(["ray", "stop", "--force"], capture_output=True, timeout=120)
        left = sorted(_live_processes() - before)
        for pid in left:  # by pid: only processes this test started
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)
        assert not left, f"processes left after ray stop: {left}"


def _ray_start(arguments: list[str], env: dict[str, str]) -> None:
    started = subprocess.run(["ray", "start", *arguments], env=env, capture_output=True, text=True, timeout=180)
    assert started.returncode == 0, f"ray start {' '.join(arguments)} failed: {started.stderr[-3000:]}"


def _gone(pid: int) -> bool:
    return _state(pid) in (None, "Z")


def test_ray_sweep_survives_a_killed_worker_and_matches_the_local_backend(cluster, tmp_path, learnable_checkpoint,
                                                                         cue_data, unbroken_sweep, record_property):
    # unbroken_sweep ran the same grid with the local backend on one thread, as Ray runs a 1-CPU task; on the
    # learnable model and data its trials differ by p (test_sweep checks that), so equal results mean something.
    out = tmp_path / "ray-sweep"
    args = [*learnable_sweep_args(out, learnable_checkpoint, cue_data, *RETRY_GRID), "--backend", "ray",
            "--address", cluster, "--gpus-per-trial", "1", "--cpus-per-trial", "1"]
    driver = subprocess.Popen([sys.executable, "-m", "addrop_cli", *args], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, env=ONE_THREAD)
    victim = out / "trials" / "addrop_p0.1_q0.5_seed1"
    try:
        wait_for(lambda: list((victim / "checkpoints").glob("step-*")) and (victim / "train.lock").is_file(), 240,
              "the first checkpoint of the trial to kill")
        train_pid = json.loads((victim / "train.lock").read_text())["pid"]
        worker_pid = _parent(train_pid)
        os.kill(worker_pid, signal.SIGKILL)
        killed = time.monotonic()
        wait_for(lambda: _gone(train_pid), 5, "the killed worker's train process to end")
        gone_after = time.monotonic() - killed
        _, stderr = driver.communicate(timeout=300)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    record_property("train_process_gone_after_s", round(gone_after, 3))  # in --junitxml reports
    assert gone_after < 1.0, f"the train process outlived its worker by {gone_after:.2f} s"
    assert driver.returncode == 0, stderr
    rows = {row["trial"]: row for row in finished_rows(out)}
    assert sorted(rows) == ["addrop_p0.1_q0.5_seed1", "addrop_p0.5_q0.5_seed1"]
    assert all(row["status"] == "ok" and row["gpus"] for row in rows.values())  # declared GPUs were placed
    assert rows[victim.name]["attempts"] == 2 and "retrying addrop_p0.1_q0.5_seed1 (1/2)" in stderr
    log = re.sub(r"\s", "", (victim / "train.log").read_text())  # the log wraps long lines, even inside words
    assert re.search(r"resumingfrom\S*?/step-0*[1-9]\d*\(epoch1,step[1-9]", log), "the retry did not resume"
    assert_same_trials(out, unbroken_sweep)
