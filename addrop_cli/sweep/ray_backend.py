"""The Ray backend: each trial is one Ray task that runs ``addrop train`` on a worker node.

Ray places the task (its CPUs and GPUs; it sets ``CUDA_VISIBLE_DEVICES`` and ``OMP_NUM_THREADS`` for it) and
cleans up the process group of a worker that dies, train process included. The driver retries lost attempts
itself (the tasks run with Ray's ``max_retries=0``) so that a retry is counted once, whatever was lost, and so
that it can break the lost attempt's lock. The sweep directory must be on storage every node sees at the
same path: the driver writes a marker there and a task that cannot read it fails at once.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any

from addrop_cli.errors import UserError, first_line
from addrop_cli.outputs import write_text
from addrop_cli.sweep.plan import Trial
from addrop_cli.sweep.trials import Outcome, last_line, run_train, train_command

MIN_RAY = (2, 58)  # cleans up a killed worker's process group, so a trial's train process dies with it
MARKER_FILE = ".addrop-storage-check"
CAPACITY_REFRESH_SECONDS = 5.0


def import_ray():
    """The ``ray`` module, or a one-line UserError saying what to install."""
    try:
        import ray
    except ImportError:
        raise UserError("--backend ray needs Ray: pip install 'addrop[ray]' (ray>=2.58)") from None
    version = tuple(int(part) for part in ray.__version__.split(".")[:2] if part.isdigit())
    if version < MIN_RAY:
        raise UserError(f"--backend ray needs ray>=2.58 (installed: {ray.__version__}): pip install 'addrop[ray]'")
    return ray


def storage_problem(marker: Path, token: str, node: str) -> str | None:
    """Why this node cannot take part (it does not see the driver's marker in the sweep directory), or None."""
    try:
        seen = marker.read_text(encoding="utf-8").strip()
    except OSError:
        seen = None
    if seen == token:
        return None
    return (f"sweep directory {marker.parent} is not on storage shared with node {node}: mount it at the same "
            "path on every node (NFS, a bucket mounted alike)")


def run_trial_task(command: list[str], directory: str, cwd: str, marker: str, token: str) -> dict[str, Any]:
    """The Ray task (runs on a worker node): check the shared storage, run ``addrop train`` in the driver's
    working directory (relative paths in the recipe mean the same there), report how it ended."""
    import ray

    node = f"{socket.gethostname()}/{ray.get_runtime_context().get_node_id()[:8]}"
    problem = storage_problem(Path(marker), token, node)
    if problem is not None:
        return {"code": None, "fatal": True, "node": node, "message": problem}
    gpus = [str(gpu) for gpu in ray.get_gpu_ids()]
    code, seconds = run_train(command, Path(directory), cwd)
    return {"code": code, "seconds": seconds, "node": node, "gpus": gpus or None,
            "message": "" if code == 0 else last_line(Path(directory))}


class RayCluster:
    """Trials as Ray tasks on the cluster at ``address`` ("auto", HOST:PORT, or None to start Ray here)."""

    def __init__(self, directory: Path, trust_remote_code: bool, address: str | None = None,
                 gpus_per_trial: float | None = None, cpus_per_trial: float = 1.0):
        self.ray = ray = import_ray()
        self.trust_remote_code = trust_remote_code
        try:
            if address is None:
                ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
            else:
                ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
        except (ConnectionError, RuntimeError, ValueError) as error:
            if address is None:
                raise UserError(f"--backend ray: Ray could not start on this machine ({first_line(error)}); start "
                                "a cluster with 'ray start --head' and pass --address auto") from None
            raise UserError(f"--address {address}: cannot join the Ray cluster ({first_line(error)}); start it "
                            "with 'ray start --head' or give its HOST:PORT") from None
        if gpus_per_trial is None:
            gpus_per_trial = 1 if ray.cluster_resources().get("GPU", 0) > 0 else 0
        self.cpus, self.gpus = cpus_per_trial, gpus_per_trial
        self._task = ray.remote(run_trial_task).options(num_cpus=cpus_per_trial, num_gpus=gpus_per_trial,
                                                        max_retries=0)
        self.marker, self.token = directory.resolve() / MARKER_FILE, uuid.uuid4().hex
        write_text(self.marker, self.token + "\n")
        self._refs: dict[Any, Trial] = {}
        self._capacity, self._checked = 0, None
        self._stop_signal: int | None = None
        self._cancelled = False
        if self.capacity() == 0:
            self.close()
            raise UserError(f"the Ray cluster has {self._resources()} but a trial needs --cpus-per-trial "
                            f"{cpus_per_trial:g} and --gpus-per-trial {gpus_per_trial:g}")

    def _resources(self) -> str:
        total = self.ray.cluster_resources()
        return f"{total.get('CPU', 0):g} CPUs and {total.get('GPU', 0):g} GPUs"

    def capacity(self) -> int:
        """Trials the cluster's live nodes could hold at once (refreshed every few seconds: nodes come and go)."""
        if self._checked is None or time.monotonic() - self._checked > CAPACITY_REFRESH_SECONDS:
            nodes = [node["Resources"] for node in self.ray.nodes() if node["Alive"]]
            self._capacity, self._checked = int(sum(self._fits(node) for node in nodes)), time.monotonic()
        return self._capacity

    def _fits(self, resources: dict[str, float]) -> float:
        fit = resources.get("CPU", 0) // self.cpus
        return min(fit, resources.get("GPU", 0) // self.gpus) if self.gpus else fit

    def running(self) -> int:
        return len(self._refs)

    def launch(self, trial: Trial) -> None:
        command = train_command(trial, self.trust_remote_code)
        directory = str(Path(trial.recipe.train.output_dir).resolve())
        ref = self._task.remote(command, directory, os.getcwd(), str(self.marker), self.token)
        self._refs[ref] = trial

    def finished(self, timeout: float) -> list[tuple[Trial, Outcome]]:
        if self._stop_signal is not None and not self._cancelled:
            for ref in self._refs:
                self.ray.cancel(ref)  # raises KeyboardInterrupt in the task: it stops its train process
            self._cancelled = True
        if not self._refs:  # nothing in flight (the cluster may have no room right now): wait, do not spin
            time.sleep(timeout)
            return []
        ready, _ = self.ray.wait(list(self._refs), num_returns=len(self._refs), timeout=timeout)
        return [(self._refs.pop(ref), self._outcome(ref)) for ref in ready]

    def _outcome(self, ref) -> Outcome:
        exceptions = self.ray.exceptions
        try:
            return Outcome(**self.ray.get(ref))
        except exceptions.TaskCancelledError:  # cancelled before it started
            return Outcome(128 + (self._stop_signal or 15), message="cancelled")
        except exceptions.RayTaskError as error:  # the task itself raised: not something a retry fixes
            return Outcome(None, message=first_line(getattr(error, "cause", None) or error), fatal=True)
        except exceptions.RayError as error:  # its worker or node died, or its result was lost
            return Outcome(None, message=f"{type(error).__name__}: {first_line(error)}")

    def stop(self, signum: int) -> None:
        self._stop_signal = signum  # Ray calls are not made from a signal handler: finished() cancels

    def close(self) -> None:
        self.marker.unlink(missing_ok=True)
        self.ray.shutdown()
