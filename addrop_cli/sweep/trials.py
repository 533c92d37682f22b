"""One attempt at one trial, whatever runs it: the ``addrop train`` command, its process with its log, and the
:class:`Outcome` every backend reports back to the sweep driver."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from addrop_cli.outputs import write_text
from addrop_cli.recipe import dump_yaml
from addrop_cli.sweep.plan import LOG_FILE, Trial
from addrop_cli.training.run_dir import PREVIOUS_RUN_DIR, other_run_differences, recipe_path

STOP_WAIT_SECONDS = 600  # a stopped trial gets this long to checkpoint before it is killed
REPLACING_RECIPE = ".replacing-recipe.yaml"  # a --force trial's recipe, until its run replaces recipe.yaml


@dataclass(frozen=True)
class Outcome:
    """How one attempt at a trial ended.

    ``code`` is the train process's exit status (negative: killed by that signal; 0 finished, 3 diverged
    (``DIVERGED_EXIT_CODE``), 128 + N stopped by signal N after checkpointing) or None when the attempt was
    lost with its worker or node. ``seconds`` is measured where the trial ran, so queueing is not counted.
    ``fatal`` marks a failure no retry can fix (storage not shared, an error inside the task itself).
    """

    code: int | None
    seconds: float = 0.0
    message: str = ""
    node: str | None = None
    gpus: list[str] | None = None
    fatal: bool = False

    @property
    def killed(self) -> bool:
        """The attempt was lost or ended by a signal: resuming from its last checkpoint can finish it."""
        return not self.fatal and (self.code is None or self.code < 0 or self.code >= 128)


def train_command(trial: Trial, trust_remote_code: bool) -> list[str]:
    """``addrop train --recipe <trial>/recipe.yaml``, writing that recipe first when the trial is new; for a
    trial that replaces another run (``--force``), ``--overwrite`` with the recipe beside it instead."""
    directory = Path(trial.recipe.train.output_dir)
    saved = recipe_path(directory)
    overwrite = replaces_another_run(trial)
    if overwrite:
        saved = directory / REPLACING_RECIPE
        write_text(saved, dump_yaml(trial.recipe.to_dict()))
    elif not saved.is_file():
        write_text(saved, dump_yaml(trial.recipe.to_dict()))
    command = [sys.executable, "-m", "addrop_cli", "train", "--recipe", str(saved)]
    command += ["--overwrite"] if overwrite else []
    return [*command, "--trust-remote-code"] if trust_remote_code else command


def replaces_another_run(trial: Trial) -> bool:
    """Whether the trial's directory holds a different run (kept under ``--force`` until the trial has its
    first checkpoint), or a replacement of one that was killed before that checkpoint."""
    directory = Path(trial.recipe.train.output_dir)
    return (directory / PREVIOUS_RUN_DIR).is_dir() or bool(other_run_differences(directory, trial.recipe))


def start_train(command: list[str], directory: Path, env: dict[str, str] | None = None,
                cwd: str | None = None) -> subprocess.Popen:
    """Start the train process with its output appended to the trial's log; it stays in the caller's process
    group, so whoever cleans up the caller's group (Ray, a job scheduler) reaches it too, and on Linux it gets
    SIGTERM (checkpoint, then exit) when the caller dies, even by SIGKILL, so that no trial outlives its sweep."""
    ends_with_caller = _ends_with(os.getpid()) if sys.platform.startswith("linux") else None
    with open(directory / LOG_FILE, "a", encoding="utf-8") as log:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                preexec_fn=ends_with_caller)


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _ends_with(parent: int):
    """A ``preexec_fn`` asking Linux to send the child SIGTERM when the thread that started it exits; if the parent
    already died between fork and this call, the child ends at once. The libc function is looked up here, in the
    parent: between fork and exec the child should not load anything (another thread may have held the lock)."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def arm() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:
            os._exit(128 + signal.SIGTERM)

    return arm


def run_train(command: list[str], directory: Path, cwd: str) -> tuple[int, float]:
    """Run the train process in ``cwd`` to its end; (exit status, seconds). On KeyboardInterrupt (how Ray
    cancels a task) the process gets SIGTERM and is waited for, so it checkpoints before this returns."""
    started = time.perf_counter()
    process = start_train(command, directory, cwd=cwd)
    try:
        while True:
            try:
                return process.wait(timeout=0.5), time.perf_counter() - started
            except subprocess.TimeoutExpired:
                continue
    except KeyboardInterrupt:
        process.send_signal(signal.SIGTERM)
        return wait_or_kill(process), time.perf_counter() - started


def wait_or_kill(process: subprocess.Popen) -> int:
    """Wait for a train process told to stop (it checkpoints first); kill it after ``STOP_WAIT_SECONDS``."""
    try:
        return process.wait(timeout=STOP_WAIT_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


def last_line(directory: Path) -> str:
    """The trial log's last non-empty line, with the log's path, for a failure message."""
    log = directory / LOG_FILE
    try:
        lines = [line for line in log.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    except OSError:
        lines = []
    return (lines[-1].strip() if lines else "no output") + f" (log: {log})"
