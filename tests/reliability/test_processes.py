"""Process faults: a sweep driver killed outright takes its trials with it; under torchrun the main process alone
prints, and an in-process sweep trains every trial in the launched processes."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

from helpers import wait_for

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200", "OMP_NUM_THREADS": "1"}


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def demo(model: Path, *extra: str) -> list[str]:
    return ["--model", str(model), "--max-train-samples", "16", "--max-eval-samples", "16", "--batch-size", "8",
            *extra]


def test_sweep_trials_end_when_the_driver_is_sigkilled(tmp_path, tiny_checkpoint):
    out = tmp_path / "sweep"
    driver = subprocess.Popen([sys.executable, "-m", "addrop_cli", "sweep", *demo(tiny_checkpoint),
                               "--epochs", "400", "--p", "0.1,0.3", "--q", "0.5", "--workers", "2",
                               "--output-dir", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env=ENV)
    trials = [out / "trials" / f"addrop_p{p}_q0.5_seed42" for p in ("0.1", "0.3")]

    def training() -> list[int] | None:  # both trials hold their lock and have trained a step
        assert driver.poll() is None, "the sweep ended before both trials were training"
        if all((t / "train.lock").is_file() and (t / "progress.json").is_file() for t in trials):
            return [json.loads((t / "train.lock").read_text())["pid"] for t in trials]
        return None

    pids = wait_for(training, 240, "both trials to train")
    driver.kill()
    driver.wait()
    wait_for(lambda: not any(alive(pid) for pid in pids), 120, "the trials to end")
    for trial in trials:
        assert not (trial / "train.lock").exists()  # each ended through its own stop: lock released
        assert "interrupted by SIGTERM; checkpoint saved" in (trial / "train.log").read_text()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
            str(free_port()), "-m", "addrop_cli", *args]


TORCHRUN_ENV = {**ENV, "ACCELERATE_USE_CPU": "true"}


def test_under_torchrun_only_the_main_process_prints_an_error(tmp_path, tiny_checkpoint):
    # --max-length above the tiny model's 128 positions: found once the model has loaded, in both processes.
    done = subprocess.run(torchrun("train", *demo(tiny_checkpoint, "--max-length", "4096"), "--output-dir",
                                   str(tmp_path / "run")), capture_output=True, text=True, env=TORCHRUN_ENV,
                          timeout=300)
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "max_length" in errors[0], done.stderr
    assert not re.search(r'File ".*addrop_cli', done.stderr), done.stderr  # torchrun's own traceback alone


def test_a_process_other_than_rank_0_prints_no_error_line(tmp_path):
    """What torchrun sets in each process decides it (end to end above, where the launcher may end rank 1 first)."""
    for rank, lines in (("0", 1), ("1", 0)):
        done = subprocess.run([sys.executable, "-m", "addrop_cli", "train", "--seed", "-5", "--output-dir",
                               str(tmp_path)], capture_output=True, text=True, env={**ENV, "RANK": rank}, timeout=120)
        assert done.returncode == 2
        assert done.stderr.count("error: train.seed=-5 is invalid") == lines, done.stderr


def test_a_file_system_error_in_another_process_is_printed_with_its_rank(tmp_path):
    """A write that fails in rank 1 alone must not go unsaid (rank 0 may be waiting for it in a barrier)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "history.jsonl").write_text('{"epoch": 1, "phase": "ft", "train_loss": 0.5, "eval_loss": 0.4}\n')
    taken = tmp_path / "file"
    taken.write_text("")
    for rank, prefix in (("0", "error: could not write"), ("1", "[rank 1] error: could not write")):
        done = subprocess.run([sys.executable, "-m", "addrop_cli", "plot", str(run), "--output",
                               str(taken / "loss.png")], capture_output=True, text=True, env={**ENV, "RANK": rank},
                              timeout=120)
        assert done.returncode == 1
        assert done.stderr.splitlines() == [line for line in done.stderr.splitlines() if line.startswith(prefix)]
        assert len(done.stderr.splitlines()) == 1, done.stderr


def test_under_torchrun_only_the_main_process_prints_the_interrupt_line(tmp_path, tiny_checkpoint):
    out = tmp_path / "run"
    launcher = subprocess.Popen(torchrun("train", *demo(tiny_checkpoint, "--epochs", "400"), "--output-dir",
                                         str(out)), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                env=TORCHRUN_ENV)
    wait_for(lambda: launcher.poll() is None and (out / "progress.json").is_file(), 240, "training to start")
    launcher.send_signal(signal.SIGTERM)  # torchrun passes it on to both processes
    _, stderr = launcher.communicate(timeout=120)
    lines = [line for line in stderr.splitlines() if "interrupted by SIGTERM" in line]
    assert len(lines) == 1 and "checkpoint saved in" in lines[0], stderr


def test_an_in_process_sweep_under_torchrun_trains_every_trial_in_both_processes(tmp_path, tiny_checkpoint):
    out = tmp_path / "sweep"
    done = subprocess.run(torchrun("sweep", *demo(tiny_checkpoint, "--epochs", "1"), "--p", "0.1,0.3", "--q",
                                   "0.5", "--output-dir", str(out)), capture_output=True, text=True,
                          env=TORCHRUN_ENV, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(row["trial"] for row in rows) == ["addrop_p0.1_q0.5_seed42", "addrop_p0.3_q0.5_seed42"]
    assert all(row["status"] == "ok" for row in rows)
    for row in rows:
        assert "x 2 process(es)" in (out / "trials" / row["trial"] / "train.log").read_text()
    assert done.stderr.count("2/2 trials finished") == 1
