"""What a new user meets first, end to end: run directories as checkpoints, Ctrl-C at any point, an offline hub,
eval's count, warnings, the run header, help, predict and what a sweep keeps on disk."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from addrop_cli.cli import app
from addrop_cli.sweep.runner import SweepProgress
from addrop_cli.training import loop
from addrop_cli.training.loop import one_class_warning

runner = CliRunner()


def ok(args):
    result = runner.invoke(app, [str(arg) for arg in args], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result


def one_line_error(args, *fragments):
    result = runner.invoke(app, [str(arg) for arg in args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def mrpc_files(tmp_path_factory, shared_data):
    """30 training and 30 validation pairs of the real MRPC files, and the validation pairs without labels."""
    folder = tmp_path_factory.mktemp("mrpc")
    for name in ("train.tsv", "dev.tsv"):
        lines = (shared_data / "MRPC" / name).read_text(encoding="utf-8-sig").splitlines()
        (folder / name).write_text("\n".join(lines[:31]) + "\n", encoding="utf-8")
    rows = [line.split("\t") for line in (folder / "dev.tsv").read_text(encoding="utf-8").splitlines()]
    (folder / "unlabelled.tsv").write_text("\n".join("\t".join(row[1:]) for row in rows) + "\n", encoding="utf-8")
    return folder


def train_args(model, files, out, *extra):
    return ["train", "--task", "mrpc", "--model", model, "--train-file", files / "train.tsv",
            "--validation-file", files / "dev.tsv", "--max-train-samples", "16", "--max-eval-samples", "16",
            "--batch-size", "8", "--output-dir", out, *extra]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_checkpoint, mrpc_files):
    out = tmp_path_factory.mktemp("runs") / "mrpc"
    result = ok(train_args(tiny_checkpoint, mrpc_files, out, "--epochs", "2", "--save-steps", "1"))
    return out, result.output


# ------------------------------------------------------------------------- 1: a run directory is no model


def test_a_run_directory_means_its_best_checkpoint_and_eval_scores_the_whole_split(run_dir, tmp_path):
    out, _ = run_dir
    result = ok(["eval", "--checkpoint", out, "--output", tmp_path / "eval.json"])
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["checkpoint"] == str(out / "best")
    # Training scored 16 pairs (--max-eval-samples 16); eval scores all 30 unless told otherwise, and says so.
    assert saved["eval_examples"] == 30 and "examples" in result.stdout and "30" in result.stdout
    limited = ok(["eval", "--checkpoint", out, "--max-eval-samples", "7", "--output", tmp_path / "e7.json"])
    assert json.loads((tmp_path / "e7.json").read_text())["eval_examples"] == 7 and "7" in limited.stdout


def test_folders_that_are_not_models_get_one_line(run_dir, tmp_path, mrpc_files):
    out, _ = run_dir
    step = next((out / "checkpoints").iterdir())
    one_line_error(["eval", "--checkpoint", step, "--recipe", "demo"], str(step), "is not a model directory",
                   "config.json")
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line_error(["attribute", "--checkpoint", empty, "--text", "a film", "--task", "sst2"],
                   "is not a model directory")
    one_line_error(train_args(empty, mrpc_files, tmp_path / "new"), "is not a model directory")
    assert not (tmp_path / "new").exists()


# --------------------------------------------------------------------- 2: Ctrl-C after the last step


def interrupt_at_save(monkeypatch, number: int) -> None:
    """Deliver SIGINT to this process while the ``number``-th epoch-end checkpoint is being written."""
    original, epoch_ends = loop.save_checkpoint, []

    def save(accelerator, output_dir, state, keep):
        if state.step_in_epoch == 0:  # end_epoch resets the step count before checkpointing
            epoch_ends.append(state.epoch)
            if len(epoch_ends) == number:
                os.kill(os.getpid(), signal.SIGINT)
        return original(accelerator, output_dir, state, keep)

    monkeypatch.setattr(loop, "save_checkpoint", save)


def test_sigint_during_the_last_checkpoint_stops_the_sweep(monkeypatch, tmp_path, tiny_checkpoint, mrpc_files):
    sweep = ["sweep", "--task", "mrpc", "--model", tiny_checkpoint, "--train-file", mrpc_files / "train.tsv",
             "--validation-file", mrpc_files / "dev.tsv", "--max-train-samples", "16", "--max-eval-samples", "16",
             "--epochs", "1", "--p", "0.3", "--q", "0.3", "--seeds", "1,2", "--output-dir", tmp_path / "sweep"]
    interrupt_at_save(monkeypatch, 1)  # epoch 1 of 1: after the trial's last step
    result = runner.invoke(app, [str(arg) for arg in sweep])
    assert result.exit_code == 130, result.output
    assert "sweep interrupted" in result.stderr
    assert sorted(path.name for path in (tmp_path / "sweep" / "trials").iterdir()) == ["addrop_p0.3_q0.3_seed1"]
    assert not (tmp_path / "sweep" / "results.jsonl").exists()
    monkeypatch.undo()
    resumed = ok(sweep)
    assert "resuming addrop_p0.3_q0.3_seed1 from step-" in resumed.stderr
    rows = [json.loads(line) for line in (tmp_path / "sweep" / "results.jsonl").read_text().splitlines()]
    assert [row["status"] for row in rows] == ["ok", "ok"]
    # 13: finished trials keep best/, history and metrics, not their resumable checkpoints.
    for trial in (tmp_path / "sweep" / "trials").iterdir():
        assert (trial / "best").is_dir() and (trial / "metrics.json").is_file()
        assert not (trial / "checkpoints").exists()
    # Without its checkpoints, a finished trial is still complete: training it again does not start over.
    trial = tmp_path / "sweep" / "trials" / "addrop_p0.3_q0.3_seed1"
    history = (trial / "history.jsonl").read_text()
    again = ok(["train", "--recipe", trial / "recipe.yaml"])
    assert "already complete" in again.stderr and (trial / "history.jsonl").read_text() == history


def test_sweep_keep_checkpoints_keeps_them(tmp_path, tiny_checkpoint, mrpc_files):
    ok(["sweep", "--task", "mrpc", "--model", tiny_checkpoint, "--train-file", mrpc_files / "train.tsv",
        "--validation-file", mrpc_files / "dev.tsv", "--max-train-samples", "8", "--max-eval-samples", "8",
        "--epochs", "1", "--p", "0.3", "--q", "0.3", "--output-dir", tmp_path / "sweep", "--keep-checkpoints"])
    (trial,) = (tmp_path / "sweep" / "trials").iterdir()
    assert any((trial / "checkpoints").iterdir())


def test_sigint_at_an_epoch_end_stops_train_and_metrics_say_unfinished(monkeypatch, tmp_path, tiny_checkpoint,
                                                                        mrpc_files):
    out = tmp_path / "run"
    args = train_args(tiny_checkpoint, mrpc_files, out, "--epochs", "2")
    interrupt_at_save(monkeypatch, 1)  # the end of epoch 1 of 2: during its checkpoint
    result = runner.invoke(app, [str(arg) for arg in args])
    assert result.exit_code == 130, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["finished"] is False and metrics["best_epoch"] == 1
    monkeypatch.undo()
    ok(args)
    assert json.loads((out / "metrics.json").read_text())["finished"] is True


def test_a_stop_before_the_test_split_is_scored_scores_it_on_resume(monkeypatch, tmp_path, tiny_checkpoint,
                                                                     mrpc_files):
    out = tmp_path / "run"
    args = train_args(tiny_checkpoint, mrpc_files, out, "--epochs", "1", "--test-file", mrpc_files / "dev.tsv")
    interrupt_at_save(monkeypatch, 1)  # the last epoch's checkpoint: training is done, the test is not
    assert runner.invoke(app, [str(arg) for arg in args]).exit_code == 130
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["finished"] is False and "test" not in metrics
    monkeypatch.undo()
    ok(args)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["finished"] is True and set(metrics["test"]) == {"accuracy", "f1"}


# ---------------------------------------------------------------------------- 3: an unreachable hub


def test_an_unreachable_hub_fails_fast_with_what_to_pass_instead(tmp_path, tiny_checkpoint, mrpc_files):
    env = {key: value for key, value in os.environ.items() if key not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    # Nothing listens on port 9 of the loopback: connections are refused at once, no traffic leaves the machine.
    env |= {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf")}

    def addrop(*args):
        started = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "addrop_cli", *map(str, args)], capture_output=True,
                                text=True, env=env, timeout=120)
        return result, time.perf_counter() - started

    result, seconds = addrop("train", "--model", "some-org/not-cached", "--task", "mrpc", "--train-file",
                             mrpc_files / "train.tsv", "--validation-file", mrpc_files / "dev.tsv",
                             "--output-dir", tmp_path / "a")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "unreachable" in lines[0] and "--model minilm" in lines[0]
    assert seconds < 30  # the libraries' own retries took 44 s
    result, _ = addrop("train", "--model", tiny_checkpoint, "--task", "mrpc", "--output-dir", tmp_path / "b")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "nyu-mll/glue" in lines[0] and "--train-file" in lines[0] and "--validation-file" in lines[0]


# ------------------------------------------------------------------------------ 5-9: what train says


def test_one_class_warning():
    assert one_class_warning({"no": 0, "yes": 100}) == ("100% of the 100 evaluation predictions are 'yes': the "
                                                        "model may predict one class")
    assert one_class_warning({"no": 4, "yes": 96}) is not None
    assert one_class_warning({"no": 6, "yes": 94}) is None
    assert one_class_warning({}) is None


def test_the_epoch_summary_warns_when_one_class_dominates(tmp_path, learnable_checkpoint, mrpc_files):
    # At lr 1e-2 the learnable tiny BERT starts with mixed predictions and collapses onto one class in epoch 2.
    out = tmp_path / "run"
    output = ok(train_args(learnable_checkpoint, mrpc_files, out, "--epochs", "2", "--lr", "1e-2")).output
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    # The reference: the documented rule, written out here (at least 95 % of the predictions in one class).
    dominated = {row["epoch"]: max(row["eval_predictions"].values()) >= 0.95 * sum(row["eval_predictions"].values())
                 for row in history}
    assert sorted(dominated.values()) == [False, True], f"the run should have one epoch of each kind: {history}"
    summaries = {int(part.split()[1]): part for part in re.split(r"^(?=epoch \d+ \()", output, flags=re.M)[1:]}
    assert sorted(summaries) == [1, 2]
    for row in history:
        label, count = max(row["eval_predictions"].items(), key=lambda item: item[1])
        total = sum(row["eval_predictions"].values())
        warning = f"warning: {count / total:.0%} of the {total} evaluation predictions are '{label}'"
        assert (warning in summaries[row["epoch"]]) == dominated[row["epoch"]], summaries[row["epoch"]]
        assert summaries[row["epoch"]].count("warning:") == dominated[row["epoch"]]


def test_fp16_on_the_cpu_is_refused_before_anything_is_written(tmp_path, tiny_checkpoint, mrpc_files):
    out = tmp_path / "run"
    one_line_error(train_args(tiny_checkpoint, mrpc_files, out, "--mixed-precision", "fp16"),
                   "train.mixed_precision='fp16' needs a GPU", "bf16")
    assert not out.exists()


def test_a_different_run_names_the_keys_that_differ(run_dir, tiny_checkpoint, mrpc_files):
    out, _ = run_dir
    line = one_line_error(train_args(tiny_checkpoint, mrpc_files, out, "--epochs", "2", "--save-steps", "1",
                                     "--lr", "1e-3", "--seed", "7"),
                          "holds a different run", "--overwrite")
    assert "train.seed 42 there, 7 here" in line and "train.lr 1e-05 there, 0.001 here" in line


def test_the_header_says_what_is_about_to_run(run_dir, tiny_checkpoint):
    out, output = run_dir
    assert f"model {tiny_checkpoint} (BertForSequenceClassification, " in output and "M parameters)" in output
    assert "task mrpc: train 16, validation 16 examples | train labels not_equivalent " in output
    assert "AD-DROP p 0.3 q 0.3 layers all (ga, cross-tuning) | 2 epochs, batch 8" in output
    assert "device cpu x 1 process(es), precision no" in output and f"output {out}" in output
    assert output.index("device cpu") < output.index("epoch 1 (ft)")
    assert json.loads((out / "progress.json").read_text()) == {"epoch": 2, "epochs": 2, "step": 2, "steps": 2}


def test_sweep_status_shows_the_running_trial_and_an_eta(tmp_path):
    trial = tmp_path / "trial"
    trial.mkdir()
    (trial / "progress.json").write_text(json.dumps({"epoch": 2, "epochs": 4, "step": 5, "steps": 10}))
    progress = SweepProgress(total=4, workers=1, skipped=0)
    progress.finished.append({"trial": "t0", "seconds": 600.0})
    progress.running["t1"], progress.directories["t1"] = 1000.0, trial
    # t1: 15 of 40 steps in 300 s -> 500 s left; then two trials of 600 s each.
    status = progress.status(now=1300.0)
    assert status == "1/4 finished | running t1 epoch 2/4 step 5/10 (5.0 min) | eta 28 min"


def test_sweep_eta_counts_this_sitting_only_and_the_longest_running_trial(tmp_path):
    trial = tmp_path / "trial"
    trial.mkdir()
    (trial / "progress.json").write_text(json.dumps({"epoch": 1, "epochs": 1, "step": 95, "steps": 100}))
    progress = SweepProgress(total=2, workers=4)
    progress.running["t1"], progress.directories["t1"], progress.resumed["t1"] = 0.0, trial, 0.90
    # Resumed at 90 %, 5 % done in 60 s: 60 s left, and a whole trial at that pace takes 20 min (counting the
    # earlier sitting's 90 % as done here would make it 63 s); (60 s + 20 min) / 4 workers = 5 min.
    assert progress.status(now=60.0).endswith("| eta 5 min")
    (trial / "progress.json").write_text(json.dumps({"epoch": 1, "epochs": 1, "step": 10, "steps": 100}))
    progress = SweepProgress(total=1, workers=4)
    progress.running["t1"], progress.directories["t1"] = 0.0, trial
    assert progress.status(now=120.0).endswith("| eta 18 min")  # one trial left: its own time, not a quarter


def test_the_hub_probe_steps_aside_behind_a_proxy(monkeypatch):
    from addrop_cli.tasks import files

    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    files.hub_unreachable.cache_clear()
    try:
        assert files.hub_unreachable() is None
    finally:
        files.hub_unreachable.cache_clear()


# -------------------------------------------------------------------------------------- 11: help


def test_help_has_defaults_no_type_tags_and_every_task_kind():
    result = ok(["train", "--help"])
    options = [line for line in result.output.splitlines() if "--" in line and "--help" not in line]
    assert not any(tag in line for line in options for tag in ("<str>", "<int>", "<float>", "<bool>", "<path>"))
    assert "[default: (the recipe's)]" in result.output
    text = " ".join(result.output.split())
    assert "conll2003" in text and "wmt16-en-ro" in text and "generation" in text
    assert ok(["--version"]).output.strip() == "addrop 0.1.0"
    assert "'addrop[ray]'" in " ".join(ok(["sweep", "--help"]).output.split())  # not eaten as rich markup
    assert "predict" in ok(["--help"]).output


# ----------------------------------------------------------------------------------- 14: predict


def test_predict_writes_a_label_and_probabilities_per_row(run_dir, mrpc_files, tmp_path):
    out, _ = run_dir
    result = ok(["predict", "--checkpoint", out, "--input-file", mrpc_files / "unlabelled.tsv",
                 "--output", tmp_path / "p.jsonl"])
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    dev = (mrpc_files / "dev.tsv").read_text(encoding="utf-8").splitlines()[1:]
    assert len(rows) == len(dev) == 30
    assert [row["text"] for row in rows] == [line.split("\t")[3] for line in dev]  # file order
    for row in rows:
        assert row["label"] in ("not_equivalent", "equivalent")
        assert abs(sum(row["probabilities"].values()) - 1) < 1e-5
        assert row["label"] == max(row["probabilities"], key=row["probabilities"].get)
    assert "30 predictions" in result.stderr
    ok(["predict", "--checkpoint", out / "best", "--input-file", mrpc_files / "dev.tsv", "--output",
        tmp_path / "p.csv"])
    with open(tmp_path / "p.csv", encoding="utf-8") as handle:
        table = list(csv.DictReader(handle))
    assert [row["label"] for row in table] == [row["label"] for row in rows]  # labels in the file are ignored
    assert set(table[0]) == {"text", "text_pair", "label", "p_not_equivalent", "p_equivalent"}


def test_predict_bad_input_is_one_line(run_dir, tmp_path, mrpc_files):
    out, _ = run_dir
    one_line_error(["predict", "--checkpoint", out, "--input-file", mrpc_files / "dev.tsv", "--output",
                    tmp_path / "p.txt"], "unsupported format '.txt'", ".jsonl, .csv")
    one_line_error(["predict", "--checkpoint", out, "--input-file", tmp_path / "missing.tsv"], "missing.tsv")
    assert not (tmp_path / "p.txt").exists()


def test_progress_on_a_terminal_has_an_eta_and_evaluation_progress(tmp_path, tiny_checkpoint, mrpc_files):
    import io

    from rich.console import Console

    from addrop_cli.recipe import resolve_recipe

    flags = {"model": str(tiny_checkpoint), "data.train_file": str(mrpc_files / "train.tsv"),
             "data.validation_file": str(mrpc_files / "dev.tsv"), "train.output_dir": str(tmp_path / "run"),
             "train.epochs": 1, "train.batch_size": 4, "data.max_train_samples": 16}
    screen = io.StringIO()
    loop.train(resolve_recipe(task="mrpc", flags=flags), console=Console(file=screen, force_terminal=True, width=160))
    shown = screen.getvalue()
    assert "epoch 1/1 ft" in shown and "eta" in shown and "evaluating" in shown
