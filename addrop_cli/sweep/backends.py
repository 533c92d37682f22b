"""The local backends of a sweep: trials trained in this process one after another, or as ``addrop train``
processes on this machine (one GPU each, round robin). The Ray backend is in :mod:`.ray_backend`."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from addrop_cli.errors import DIVERGED_EXIT_CODE, UserError
from addrop_cli.sweep.plan import LOG_FILE, Trial
from addrop_cli.sweep.runner import Backend, SweepInterrupted
from addrop_cli.sweep.trials import (
    Outcome,
    last_line,
    replaces_another_run,
    start_train,
    train_command,
    wait_or_kill,
)


def visible_devices() -> list[str]:
    """GPU ids trials are spread over (round robin), honouring CUDA_VISIBLE_DEVICES; empty without GPUs."""
    import torch

    if not torch.cuda.is_available():
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed:
        return [device.strip() for device in listed.split(",") if device.strip()]
    return [str(index) for index in range(torch.cuda.device_count())]


class InProcess:
    """One trial at a time in this process (no start-up cost per trial; the default for ``--workers 1``)."""

    def __init__(self, trust_remote_code: bool):
        self.trust_remote_code = trust_remote_code
        self._ended: list[tuple[Trial, Outcome]] = []
        self._training = False

    def capacity(self) -> int:
        return 1

    def running(self) -> int:
        return len(self._ended)

    def launch(self, trial: Trial) -> None:
        from rich.console import Console

        from addrop_cli.training.loop import TrainingDiverged, TrainingInterrupted, train

        directory = Path(trial.recipe.train.output_dir)
        directory.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        with open(directory / LOG_FILE, "a", encoding="utf-8") as log:
            try:
                self._training = True
                train(trial.recipe, overwrite=replaces_another_run(trial), trust_remote_code=self.trust_remote_code,
                      console=Console(file=log, width=120))
                code, message = 0, ""
            except TrainingInterrupted as stop:  # the training loop took the signal and checkpointed
                raise SweepInterrupted(stop.signum) from None
            except TrainingDiverged as error:
                code, message = DIVERGED_EXIT_CODE, str(error)
            finally:
                self._training = False
        self._ended.append((trial, Outcome(code, time.perf_counter() - started, message, socket.gethostname())))

    def finished(self, timeout: float) -> list[tuple[Trial, Outcome]]:
        ended, self._ended = self._ended, []
        return ended

    def stop(self, signum: int) -> None:
        """Between trials the driver stops on its own; during a trial's setup (before the training loop takes
        the signals itself) nothing is worth saving yet, so the trial stops at once."""
        if self._training:
            raise SweepInterrupted(signum)


class LocalProcesses:
    """Up to ``workers`` ``addrop train`` processes at once, each pinned to one GPU (round robin) when GPUs
    are visible."""

    def __init__(self, workers: int, trust_remote_code: bool):
        self.workers, self.trust_remote_code = workers, trust_remote_code
        self.devices = visible_devices()
        self._slots: dict[int, tuple[subprocess.Popen, Trial, float]] = {}
        self._stop_signal: int | None = None

    def capacity(self) -> int:
        return self.workers

    def running(self) -> int:
        return len(self._slots)

    def _device(self, slot: int) -> str | None:
        """The GPU a worker slot pins its trials to (round robin), or None without GPUs."""
        return self.devices[slot % len(self.devices)] if self.devices else None

    def launch(self, trial: Trial) -> None:
        slot = min(set(range(self.workers)) - set(self._slots))
        device = self._device(slot)
        env = dict(os.environ)
        if device is not None:
            env["CUDA_VISIBLE_DEVICES"] = device
        command = train_command(trial, self.trust_remote_code)
        process = start_train(command, Path(trial.recipe.train.output_dir), env)
        self._slots[slot] = (process, trial, time.perf_counter())
        if self._stop_signal is not None:  # the stop arrived while this trial was being started
            process.send_signal(self._stop_signal)

    def finished(self, timeout: float) -> list[tuple[Trial, Outcome]]:
        time.sleep(timeout)
        ended = []
        for slot, (process, trial, started) in list(self._slots.items()):
            code = process.poll()
            if code is None:
                continue
            del self._slots[slot]
            directory = Path(trial.recipe.train.output_dir)
            message = "" if code == 0 else last_line(directory)
            gpus = None if self._device(slot) is None else [self._device(slot)]
            ended.append((trial, Outcome(code, time.perf_counter() - started, message, socket.gethostname(), gpus)))
        return ended

    def stop(self, signum: int) -> None:
        self._stop_signal = signum
        for process, *_ in list(self._slots.values()):
            if process.poll() is None:
                process.send_signal(signum)

    def close(self) -> None:
        """The driver is leaving (an error on its side): stop any trial still running, as a signal would."""
        for process, *_ in self._slots.values():
            if process.poll() is None:
                process.terminate()
        for process, *_ in self._slots.values():
            wait_or_kill(process)


BACKENDS = ("local", "ray")


@dataclass(frozen=True)
class BackendSettings:
    """Where trials run, as the sweep's options give it; validated on construction."""

    name: str = "local"
    workers: int = 1
    address: str | None = None
    gpus_per_trial: float | None = None
    cpus_per_trial: float | None = None
    max_retries: int = 2

    def __post_init__(self) -> None:
        if self.name not in BACKENDS:
            raise UserError(f"--backend {self.name!r} is not one of: {', '.join(BACKENDS)}")
        if self.workers < 1:
            raise UserError(f"--workers {self.workers} is invalid: use 1 or more processes")
        if self.max_retries < 0:
            raise UserError(f"--max-retries {self.max_retries} is invalid: use 0 or more")
        if self.cpus_per_trial is not None and self.cpus_per_trial <= 0:
            raise UserError(f"--cpus-per-trial {self.cpus_per_trial:g} is invalid: use a number above 0")
        if self.gpus_per_trial is not None and self.gpus_per_trial < 0:
            raise UserError(f"--gpus-per-trial {self.gpus_per_trial:g} is invalid: use 0 or more")
        if self.name == "local":
            given = [flag for flag, value in (("--address", self.address), ("--gpus-per-trial", self.gpus_per_trial),
                                              ("--cpus-per-trial", self.cpus_per_trial))
                     if value is not None]
            if given:
                raise UserError(f"{', '.join(given)} only apply to --backend ray")
        elif self.workers != 1:
            raise UserError("--workers is for --backend local: Ray runs as many trials as the cluster holds "
                            "(see --cpus-per-trial and --gpus-per-trial)")
        else:
            from addrop_cli.sweep.ray_backend import import_ray

            import_ray()  # installed and recent enough, before anything is written


@contextlib.contextmanager
def open_backend(settings: BackendSettings, directory: Path, trust_remote_code: bool) -> Iterator[Backend]:
    """The backend the settings name, closed (Ray disconnected) when the block ends."""
    if settings.name == "local" and settings.workers == 1:
        yield InProcess(trust_remote_code)
        return
    if settings.name == "local":
        processes = LocalProcesses(settings.workers, trust_remote_code)
        try:
            yield processes
        finally:
            processes.close()
        return
    from addrop_cli.sweep.ray_backend import RayCluster

    cpus = 1.0 if settings.cpus_per_trial is None else settings.cpus_per_trial
    cluster = RayCluster(directory, trust_remote_code, settings.address, settings.gpus_per_trial, cpus)
    try:
        yield cluster
    finally:
        cluster.close()
