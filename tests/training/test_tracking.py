"""Experiment trackers through Accelerate, read back for real and offline: TensorBoard event files, an MLflow
SQLite store, a W&B offline run; and the one-line refusals before training."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from addrop_cli.cli import app
from addrop_cli.recipe import Recipe, build

runner = CliRunner()


def train_args(out, checkpoint, report_to: str) -> list[str]:
    """Two epochs (one plain, one AD-DROP) of the tiny BERT on the bundled SST-2 sentences, logging every step."""
    return ["train", "--model", str(checkpoint), "--output-dir", str(out), "--epochs", "2", "--batch-size", "8",
            "--max-train-samples", "24", "--max-eval-samples", "16", "--max-length", "24", "--report-to", report_to,
            "--set", "train.log_every=1", "--set", "train.lr=1e-3"]


def history(out) -> list[dict]:
    return [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]


def check_epoch_signals(epochs: dict[str, list[float]], out) -> None:
    """What every tracker must hold per epoch, against history.jsonl."""
    rows = history(out)
    assert epochs["eval/accuracy"] == pytest.approx([row["eval"]["accuracy"] for row in rows])
    assert epochs["eval/loss"] == pytest.approx([row["eval_loss"] for row in rows])
    assert epochs["addrop_epoch"] == [0, 1]
    shares = [max(row["eval_predictions"].values()) / sum(row["eval_predictions"].values()) for row in rows]
    assert epochs["eval/majority_class_share"] == pytest.approx(shares)
    assert len(epochs["addrop/dropped_share"]) == 1 and 0 < epochs["addrop/dropped_share"][0] < 0.3 * 0.3 * 1.5


def test_tensorboard_events_hold_the_logged_scalars(tmp_path, tiny_checkpoint):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    result = runner.invoke(app, train_args(out, tiny_checkpoint, "tensorboard"))
    assert result.exit_code == 0, result.output
    events = EventAccumulator(str(out / "logs" / "addrop"))  # the hparams go to a subfolder of their own
    events.Reload()
    scalars = {tag: [event.value for event in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    assert len(scalars["train/loss"]) == 6 and len(scalars["train/learning_rate"]) == 6  # 3 steps x 2 epochs
    assert all(value > 0 for value in scalars["train/samples_per_second"])
    check_epoch_signals(scalars, out)


def test_mlflow_sqlite_store_holds_the_run_and_its_config(tmp_path, tiny_checkpoint, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    out = tmp_path / "run"
    result = runner.invoke(app, train_args(out, tiny_checkpoint, "mlflow"))
    assert result.exit_code == 0, result.output
    client = mlflow.MlflowClient(tracking_uri=uri)  # not mlflow.set_tracking_uri: no global state left behind
    (found,) = client.search_runs([client.get_experiment_by_name("addrop").experiment_id])
    run_id = found.info.run_id
    run = client.get_run(run_id)
    assert run.info.run_name == "run" and run.data.params["addrop.p"] == "0.3"
    epochs = {key: [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]
              for key in ("eval/accuracy", "eval/loss", "addrop_epoch", "eval/majority_class_share",
                          "addrop/dropped_share")}
    check_epoch_signals(epochs, out)


def wandb_records(path):
    """The records of a W&B offline run file, read without wandb's own reader (0.31 ships none in Python): a
    7-byte header (":W&B", magic 0xBEE1, version 0), then LevelDB's log format: 32 KiB blocks of chunks, each a
    7-byte header (crc32, length, type: 1 full, 2 first, 3 middle, 4 last) and a piece of a Record protobuf."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:7] == b":W&B\xe1\xbe\x00", data[:7]
    offset, pending, block = 7, b"", 32768
    while offset + 7 <= len(data):
        if block - offset % block < 7:  # a block's tail too short for a header is padding
            offset += block - offset % block
            continue
        _, length, kind = struct.unpack("<IHB", data[offset : offset + 7])
        pending += data[offset + 7 : offset + 7 + length]
        offset += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def test_wandb_offline_run_holds_the_logged_scalars_and_the_config(tmp_path, tiny_checkpoint, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    # In a subprocess: wandb's service and its threads stay out of the test process.
    done = subprocess.run([sys.executable, "-m", "addrop_cli", *train_args(out, tiny_checkpoint, "wandb")],
                          capture_output=True, text=True, timeout=300, env=os.environ.copy())
    assert done.returncode == 0, done.stderr
    (run_file,) = (tmp_path / "wandb").glob("offline-run-*/*.wandb")
    records = list(wandb_records(run_file))
    (run,) = [record.run for record in records if record.HasField("run")]
    assert run.display_name == "run"
    config = {item.key: json.loads(item.value_json) for record in records if record.HasField("config")
              for item in record.config.update}
    assert config["addrop.p"] == 0.3 and config["train.lr"] == 1e-3 and config["train.epochs"] == 2
    scalars: dict[str, list[float]] = {}
    for record in records:
        if record.HasField("history"):
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)  # wandb 0.31 fills nested_key, not key
                scalars.setdefault(key, []).append(json.loads(item.value_json))
    assert len(scalars["train/loss"]) == 6 and len(scalars["train/learning_rate"]) == 6  # 3 steps x 2 epochs
    check_epoch_signals(scalars, out)


@pytest.mark.parametrize(("report_to", "fragment"), [
    ("tensorbored", "train.report_to='tensorbored' is invalid: choose none, all or"),
    ("aim", "train.report_to: aim is not installed: pip install aim"),
])
def test_bad_or_missing_tracker_is_one_line_before_training(tmp_path, tiny_checkpoint, report_to, fragment):
    out = tmp_path / "run"
    result = runner.invoke(app, train_args(out, tiny_checkpoint, report_to))
    assert result.exit_code == 2 and result.stderr.count("\n") == 1 and fragment in result.stderr, result.output
    assert not out.exists()


def test_a_tracker_that_cannot_start_stops_before_training(tmp_path, tiny_checkpoint, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "nosuchscheme://nowhere")
    out = tmp_path / "run"
    result = runner.invoke(app, train_args(out, tiny_checkpoint, "mlflow"))
    assert result.exit_code == 2 and "could not start the mlflow run" in result.stderr, result.output
    assert not (out / "history.jsonl").exists() and not (out / "checkpoints").exists()


def test_report_to_is_not_part_of_what_makes_a_run_the_same():
    from addrop_cli.recipe import run_identity

    plain, tracked = build(Recipe, {}), build(Recipe, {"train": {"report_to": "tensorboard"}})
    assert tracked.train.report_to == ["tensorboard"] and plain.train.report_to == []
    assert run_identity(plain.to_dict()) == run_identity(tracked.to_dict())
