"""Nothing of an earlier run is lost, and the real error comes first: every failure before training leaves an
output folder holding a finished run byte-identical, ``--overwrite`` keeps the old run until the new one has its
first checkpoint, and a rerun of a finished run says only that it is complete."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import demo_recipe, tree_hash

from addrop_cli.training.run_dir import PREVIOUS_RUN_DIR, SetAside, recover_set_aside

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}


def addrop(*args, check_exit: int | None = None, **kwargs) -> subprocess.CompletedProcess:
    """``python -m addrop_cli ARGS`` as a user runs it (a fresh process, offline hub)."""
    result = subprocess.run([sys.executable, "-m", "addrop_cli", *map(str, args)], capture_output=True, text=True,
                            env=ENV, timeout=300, **kwargs)
    if check_exit is not None:
        assert result.returncode == check_exit, result.stdout + result.stderr
    return result


def train_args(model, out, *extra) -> list:
    """The demo recipe's bundled SST-2 data on a tiny model: 16 sentences, one epoch, a checkpoint per step."""
    return ["train", "--recipe", "demo", "--model", model, "--output-dir", out, "--max-train-samples", "16",
            "--max-eval-samples", "16", "--epochs", "1", "--batch-size", "8", "--save-steps", "1", *extra]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_checkpoint) -> Path:
    """A finished run (best/, metrics, history, checkpoints) to copy for each attempt at breaking it."""
    out = tmp_path_factory.mktemp("finished") / "run"
    addrop(*train_args(tiny_checkpoint, out), check_exit=0)
    assert {"best", "checkpoints", "metrics.json", "history.jsonl", "recipe.yaml"} <= {p.name for p in out.iterdir()}
    return out


@pytest.fixture
def run_copy(finished_run, tmp_path) -> tuple[Path, dict[str, str]]:
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    return copy, tree_hash(copy)


def one_line(result: subprocess.CompletedProcess, *fragments: str) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# ------------------------------------------------------------- 1: a failure before training changes nothing


@pytest.mark.parametrize("failure", ["bad-model-id", "not-a-model-folder", "empty-config-folder",
                                     "missing-train-file", "bad-recipe-key"])
def test_a_failed_overwrite_leaves_the_finished_run_byte_identical(failure, run_copy, tiny_checkpoint, tmp_path):
    out, before = run_copy
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    if failure == "empty-config-folder":  # transformers raises ValueError here, not OSError
        (folder / "config.json").write_text("{}")
    model, extra, expected = {
        "bad-model-id": ("no-such/model-xyz", [], "no-such/model-xyz"),
        "not-a-model-folder": (folder, [], "is not a model directory"),
        "empty-config-folder": (folder, [], "cannot load"),
        "missing-train-file": (tiny_checkpoint, ["--train-file", tmp_path / "nope.tsv"], "nope.tsv"),
        "bad-recipe-key": (tiny_checkpoint, ["--set", "addrop.qq=0.1"], "unknown recipe key 'addrop.qq'"),
    }[failure]
    one_line(addrop(*train_args(model, out, "--overwrite", *extra)), expected)
    assert tree_hash(out) == before


def test_ctrl_c_during_setup_is_one_line_and_leaves_the_finished_run_byte_identical(run_copy, tiny_checkpoint):
    out, before = run_copy
    # SIGINT back to its default in the child: a shell that runs the tests in the background ignores it, and
    # Python started with it ignored would never see the Ctrl-C.
    process = subprocess.Popen([sys.executable, "-m", "addrop_cli",
                                *map(str, train_args(tiny_checkpoint, out, "--overwrite"))],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # The moment torch's library is mapped the process is importing it, seconds before transformers is imported and
    # the model loaded, let alone a step trained (a fixed sleep raced a fast machine that finished the run in it).
    deadline = time.monotonic() + 60
    while "libtorch" not in Path(f"/proc/{process.pid}/maps").read_text() and time.monotonic() < deadline:
        assert process.poll() is None, "the run ended before importing torch"
        time.sleep(0.005)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert stderr.splitlines()[-1] == "interrupted" and "Traceback" not in stderr  # one line, no traceback
    assert tree_hash(out) == before


def test_a_failure_after_the_old_run_was_set_aside_puts_it_back(monkeypatch, run_copy, tiny_checkpoint):
    """Ctrl-C (or any error) after the output folder was claimed, before the new run's first checkpoint."""
    from addrop_cli.training import loop

    out, before = run_copy
    seen = []

    def interrupted(run, progress, stop):
        seen.append(sorted(p.name for p in out.iterdir()))  # what the folder holds while the new run starts
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "train_epoch", interrupted)
    recipe = demo_recipe(tiny_checkpoint, out)
    with pytest.raises(KeyboardInterrupt):
        loop.train(recipe, overwrite=True)
    assert PREVIOUS_RUN_DIR in seen[0] and "best" not in seen[0]  # it was really set aside
    assert tree_hash(out) == before


def test_a_replacement_killed_before_its_first_checkpoint_is_undone_on_the_next_start(run_copy, tiny_checkpoint):
    out, before = run_copy
    # The new run is SIGKILLed as its first epoch starts: no handler runs, .previous-run/ stays behind.
    code = ("import os, signal, sys; from addrop_cli.training import loop\n"
            "loop.train_epoch = lambda *args: os.kill(os.getpid(), signal.SIGKILL)\n"
            "from addrop_cli.cli import main; sys.argv = ['addrop', *sys.argv[1:]]; main()")
    killed = subprocess.run([sys.executable, "-c", code, *map(str, train_args(tiny_checkpoint, out, "--overwrite",
                                                                               "--lr", "1e-4"))],
                            capture_output=True, text=True, env=ENV, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert (out / PREVIOUS_RUN_DIR / "best").is_dir() and not (out / "best").exists()
    rerun = addrop(*train_args(tiny_checkpoint, out), check_exit=0)  # the old run's own command
    assert "restored the run" in rerun.stderr and "already complete" in rerun.stderr
    assert tree_hash(out) == before


def test_set_aside_moves_back_what_a_kill_mid_move_left(tmp_path):
    out = tmp_path / "run"
    (out / "best").mkdir(parents=True)
    (out / "best" / "model.bin").write_bytes(b"weights")
    (out / "metrics.json").write_text("{}")
    before = tree_hash(out)
    staging = out / f"{PREVIOUS_RUN_DIR}.tmp"  # as a kill after moving best/ and before metrics.json leaves it
    staging.mkdir()
    os.replace(out / "best", staging / "best")
    assert recover_set_aside(out) is None
    assert tree_hash(out) == before
    with SetAside(out) as aside:
        (out / "recipe.yaml").write_text("new run")
        aside.discard()  # the new run's first checkpoint
    assert sorted(p.name for p in out.iterdir()) == ["recipe.yaml"]


def test_overwrite_replaces_the_run_once_the_new_one_has_a_checkpoint(run_copy, tiny_checkpoint):
    out, _ = run_copy
    old_history = (out / "history.jsonl").read_text()
    addrop(*train_args(tiny_checkpoint, out, "--overwrite", "--lr", "1e-3"), check_exit=0)
    assert not (out / PREVIOUS_RUN_DIR).exists() and not list(out.glob(f"{PREVIOUS_RUN_DIR}*"))
    assert (out / "history.jsonl").read_text() != old_history
    assert "lr: 0.001" in (out / "recipe.yaml").read_text()


# --------------------------------------------------------------- 2: the first real problem is the one named


@pytest.mark.parametrize("problem", ["offline-hub-id", "missing-train-file", "not-a-model-folder"])
def test_the_real_problem_is_named_before_the_folder_clash(problem, run_copy, tiny_checkpoint, tmp_path):
    out, before = run_copy  # holds a different run (the demo recipe on the tiny model) than each command asks
    folder = tmp_path / "plain-folder"
    folder.mkdir()
    model, extra, expected = {
        "offline-hub-id": ("roberta-base", [], "roberta-base"),
        "missing-train-file": (tiny_checkpoint, ["--train-file", tmp_path / "nope.tsv", "--lr", "1e-3"], "nope.tsv"),
        "not-a-model-folder": (folder, [], "is not a model directory"),
    }[problem]
    message = one_line(addrop(*train_args(model, out, *extra)), expected)
    assert "holds a different run" not in message
    assert tree_hash(out) == before


def test_the_folder_clash_is_reported_once_every_input_is_good(run_copy, tiny_checkpoint):
    out, before = run_copy
    one_line(addrop(*train_args(tiny_checkpoint, out, "--lr", "1e-3")), "holds a different run",
             "train.lr 5e-05 there, 0.001 here", "--overwrite")
    assert tree_hash(out) == before


# ----------------------------------------------------------------------- 3: a finished run says so, once


def test_rerunning_a_finished_run_says_it_is_complete_and_nothing_about_resuming(run_copy, tiny_checkpoint):
    out, before = run_copy
    result = addrop(*train_args(tiny_checkpoint, out), check_exit=0)
    assert "already complete" in result.stderr and "--overwrite" in result.stderr
    assert "resuming" not in result.stdout + result.stderr
    assert tree_hash(out) == before


# ---------------------------------------------------- the other commands: outputs replaced only when ready


def test_eval_predict_and_attribute_with_a_bad_checkpoint_leave_earlier_outputs(finished_run, tmp_path):
    earlier = {name: tmp_path / name for name in ("eval.json", "predictions.csv")}
    for path in earlier.values():
        path.write_text("earlier output\n")
    report = tmp_path / "report"
    addrop("attribute", "--checkpoint", finished_run, "--text", "a good film", "--output-dir", report, check_exit=0)
    plain = tmp_path / "plain-folder"  # exists, passes the argument checks, fails to load
    plain.mkdir()
    before = tree_hash(tmp_path)
    one_line(addrop("eval", "--checkpoint", plain, "--output", earlier["eval.json"]), str(plain))
    one_line(addrop("predict", "--checkpoint", plain, "--input-file", finished_run / "history.jsonl",
                    "--output", earlier["predictions.csv"]), str(plain))
    one_line(addrop("attribute", "--checkpoint", plain, "--text", "a film", "--output-dir", report), str(plain))
    assert tree_hash(tmp_path) == before
    assert json.loads((report / "summary.json").read_text())  # the earlier report is whole
