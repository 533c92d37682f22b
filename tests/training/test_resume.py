"""Reliability: exact resume after SIGKILL, clean stop on SIGINT/SIGTERM, determinism, divergence."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from addrop_cli.training.run_dir import STATE_FILE, checkpoint_dirs

METRIC_KEYS = ("epoch", "phase", "train_loss", "eval", "eval_loss", "eval_predictions")


def command(out: Path, model: Path, data: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "addrop_cli", "train", "--task", "mrpc", "--model", str(model),
            "--train-file", str(data / "MRPC/train.tsv"), "--validation-file", str(data / "MRPC/dev.tsv"),
            "--max-eval-samples", "64", "--batch-size", "8", "--layers", "all", "--output-dir", str(out), *extra]


def metrics_of(out: Path) -> tuple[dict, list[dict]]:
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    return json.loads((out / "metrics.json").read_text()), [{k: h[k] for k in METRIC_KEYS} for h in history]


def final_weights(out: Path) -> dict:
    return load_file(checkpoint_dirs(out)[-1] / "model.safetensors")


def wait_for_checkpoint(process: subprocess.Popen, out: Path, epoch: int, timeout: float = 120) -> dict:
    """Poll until a mid-epoch checkpoint of ``epoch`` exists; returns its state."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for checkpoint in checkpoint_dirs(out):
            try:
                state = json.loads((checkpoint / STATE_FILE).read_text())
            except FileNotFoundError:  # retired by save_total_limit between listing and reading
                continue
            if state["epoch"] == epoch and state["step_in_epoch"] > 0:
                return state
        if process.poll() is not None:
            pytest.fail(f"training ended before a checkpoint in epoch {epoch}: {process.stderr.read()}")
        time.sleep(0.01)
    pytest.fail("no checkpoint appeared in time")


@pytest.mark.parametrize("adapters", [(), ("--lora-r", "4"), ("--method", "rdrop"), ("--method", "hiddencut")],
                         ids=["full", "lora", "rdrop", "hiddencut"])
def test_sigkill_mid_addrop_epoch_then_resume_is_bit_exact(tmp_path, tiny_checkpoint, shared_data, adapters):
    extra = ("--max-train-samples", "1200", "--epochs", "2", "--save-steps", "25", *adapters)
    reference = tmp_path / "reference"
    subprocess.run(command(reference, tiny_checkpoint, shared_data, *extra), check=True, capture_output=True)

    killed = tmp_path / "killed"
    process = subprocess.Popen(command(killed, tiny_checkpoint, shared_data, *extra), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    state = wait_for_checkpoint(process, killed, epoch=2)  # epoch 2 is the regularized epoch
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert state["history"] and len(state["history"]) == 1
    assert len(metrics_of(killed)[1]) == 1, "the kill came after epoch 2 ended"

    resumed = subprocess.run(command(killed, tiny_checkpoint, shared_data, *extra), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stderr
    assert metrics_of(killed) == metrics_of(reference)
    expected, actual = final_weights(reference), final_weights(killed)
    assert expected.keys() == actual.keys()
    assert all((expected[name] == actual[name]).all() for name in expected)


SIGNAL_RUN = ("--max-train-samples", "800", "--epochs", "1", "--save-steps", "20")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_checkpoint, shared_data) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    subprocess.run(command(out, tiny_checkpoint, shared_data, *SIGNAL_RUN), check=True, capture_output=True)
    return out


def unwrapped(text: str) -> str:
    """The console wraps long lines, inside paths too: compare without whitespace (the paths here have none)."""
    return re.sub(r"\s", "", text)


def step_of(checkpoint: Path) -> int:
    return int(checkpoint.name.removeprefix("step-"))


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_checkpoints_and_exits_with_resume_hint(tmp_path, tiny_checkpoint, shared_data, uninterrupted, signum,
                                                       code):
    out = tmp_path / "run"
    process = subprocess.Popen(command(out, tiny_checkpoint, shared_data, *SIGNAL_RUN), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    wait_for_checkpoint(process, out, epoch=1)
    before = checkpoint_dirs(out)  # what existed when the signal was sent
    signalled = time.time()
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == code, stderr
    assert f"interrupted by {signal.Signals(signum).name}" in stderr
    assert "run the same command again (or add --resume)" in stderr
    # The checkpoint the stop wrote, not one that was there before the signal: a later step, written after it.
    saved = Path(re.search(r"checkpointsavedin(\S+?/step-\d+)", unwrapped(stderr))[1])
    assert saved == checkpoint_dirs(out)[-1] and step_of(saved) > max(map(step_of, before))
    assert (saved / STATE_FILE).stat().st_mtime >= signalled - 0.01  # file times lag time.time() by up to a tick
    state = json.loads((saved / STATE_FILE).read_text())
    assert state["epoch"] == 1 and 0 < state["step_in_epoch"] < 100, "the signal came after the epoch ended"

    resumed = subprocess.run(command(out, tiny_checkpoint, shared_data, *SIGNAL_RUN, "--resume"), capture_output=True,
                             text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumingfrom{saved}(epoch1,step{state['step_in_epoch']})" in unwrapped(resumed.stderr)
    # The stopped-and-resumed run is the uninterrupted one, bit for bit (as after SIGKILL, see above).
    assert metrics_of(out) == metrics_of(uninterrupted)
    expected, actual = final_weights(uninterrupted), final_weights(out)
    assert expected.keys() == actual.keys()
    assert all((expected[name] == actual[name]).all() for name in expected)


def test_same_command_twice_gives_identical_history(tmp_path, tiny_checkpoint, shared_data):
    extra = ("--max-train-samples", "96", "--epochs", "2")
    runs = [tmp_path / "a", tmp_path / "b"]
    for out in runs:
        subprocess.run(command(out, tiny_checkpoint, shared_data, *extra), check=True, capture_output=True)
    assert metrics_of(runs[0]) == metrics_of(runs[1])


def test_rerunning_a_finished_run_does_not_train_again(tmp_path, tiny_checkpoint, shared_data):
    out = tmp_path / "run"
    args = command(out, tiny_checkpoint, shared_data, "--max-train-samples", "32", "--epochs", "1")
    subprocess.run(args, check=True, capture_output=True)
    again = subprocess.run(args, capture_output=True, text=True)
    assert again.returncode == 0 and "already complete" in again.stderr


def test_non_finite_loss_stops_with_a_clear_message(tmp_path, tiny_checkpoint, shared_data):
    out = tmp_path / "run"
    result = subprocess.run(command(out, tiny_checkpoint, shared_data, "--max-train-samples", "160", "--epochs", "2",
                                    "--lr", "1e30", "--set", "train.log_every=1", "--set", "train.max_grad_norm=0"),
                            capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert result.returncode == 3, result.stderr
    assert "loss became non-finite" in result.stderr and "last good checkpoint" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_generation_run_with_tied_embeddings_resumes_bit_exact_from_a_mid_addrop_epoch_checkpoint(
        tmp_path, tiny_causal_lm_dir):
    """The tiny Llama language model ties its input and output embeddings, which a checkpoint stores once: a run
    restarted from a checkpoint in the middle of its AD-DROP epoch ends exactly where the uninterrupted one did."""
    import shutil

    from tiny_models import CAUSAL_WORDS

    words = CAUSAL_WORDS[:8]
    rows = [{"prompt": f"copy : {a} {b} :", "completion": f"{a} {b}"} for a in words for b in words]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))

    def run(out: Path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "addrop_cli", "train", "--task", "generation", "--model",
                               str(tiny_causal_lm_dir), "--train-file", str(data), "--validation-file", str(data),
                               "--max-length", "16", "--batch-size", "16", "--epochs", "2", "--save-steps", "2",
                               "--layers", "all", "--output-dir", str(out), "--set", "train.save_total_limit=null"],
                              capture_output=True, text=True, timeout=300)

    reference = tmp_path / "reference"
    assert run(reference).returncode == 0
    states = {path: json.loads((path / STATE_FILE).read_text()) for path in checkpoint_dirs(reference)}
    middle = [checkpoint for checkpoint, state in states.items() if (state["epoch"], state["step_in_epoch"]) == (2, 2)]
    assert len(middle) == 1
    restarted = tmp_path / "restarted"
    shutil.copytree(middle[0], restarted / "checkpoints" / middle[0].name)
    shutil.copy(reference / "recipe.yaml", restarted / "recipe.yaml")
    result = run(restarted)
    assert result.returncode == 0, result.stderr
    assert "resuming from" in result.stderr
    assert metrics_of(restarted) == metrics_of(reference)
    expected, actual = final_weights(reference), final_weights(restarted)
    assert "lm_head.weight" not in expected and expected.keys() == actual.keys()
    assert all((expected[name] == actual[name]).all() for name in expected)
