"""best/README.md is a Hub model card holding what metrics.json holds; --push-to-hub is refused before
training where it could not happen (the upload itself needs the Hub, which tests never reach)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from huggingface_hub import ModelCard
from typer.testing import CliRunner

import addrop_cli
from addrop_cli.cli import app

DEMO_DEV = Path(addrop_cli.__file__).parent / "demo_data" / "sst2" / "dev.tsv"


def train_args(out, checkpoint, *extra: str) -> list[str]:
    return ["train", "--model", str(checkpoint), "--output-dir", str(out), "--epochs", "2", "--batch-size", "8",
            "--max-train-samples", "24", "--max-eval-samples", "16", "--max-length", "24", "--set", "train.lr=1e-3",
            *extra]


def test_model_card_parses_and_holds_the_metrics(tmp_path, tiny_checkpoint):
    out = tmp_path / "card-run"
    result = CliRunner().invoke(app, train_args(out, tiny_checkpoint, "--test-file", str(DEMO_DEV)))
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    card = ModelCard.load(out / "best" / "README.md")
    data = card.data
    assert data.library_name == "transformers" and data.pipeline_tag == "text-classification"
    assert data.tags == ["addrop", "ad-drop"] and data.datasets == ["nyu-mll/glue"]
    assert data.base_model is None  # a local path is not a Hub model id; the body names it
    scores = {(r.dataset_split, r.metric_type): r.metric_value for r in data.eval_results}
    assert scores == {**{("validation", k): round(v, 6) for k, v in metrics["eval"].items()},
                      **{("test", k): round(v, 6) for k, v in metrics["test"].items()}}
    assert data.model_name == "card-run" and str(tiny_checkpoint) in card.text
    for section in ("## AD-DROP", "## Training", "## Epochs", "## Reproduce", "addrop train --recipe recipe.yaml"):
        assert section in card.text
    assert card.text.count("| addrop |") + card.text.count("| ft |") == 2  # one row per epoch


def push(tmp_path, checkpoint, **env: str) -> subprocess.CompletedProcess:
    out = tmp_path / "pushed"
    environment = {**os.environ, "HF_HOME": str(tmp_path / "hf-home"), **env}
    environment.pop("HF_TOKEN", None)
    done = subprocess.run([sys.executable, "-m", "addrop_cli", *train_args(out, checkpoint, "--push-to-hub",
                                                                           "someone/tiny-addrop")],
                          capture_output=True, text=True, timeout=120, env=environment)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert not out.exists()  # refused before anything was written
    return done


def test_push_to_hub_is_refused_before_training_when_offline(tmp_path, tiny_checkpoint):
    done = push(tmp_path, tiny_checkpoint, HF_HUB_OFFLINE="1")
    assert "--push-to-hub someone/tiny-addrop: the Hub is offline here" in done.stderr


def test_push_to_hub_is_refused_before_training_without_a_token(tmp_path, tiny_checkpoint):
    done = push(tmp_path, tiny_checkpoint, HF_HUB_OFFLINE="0")
    assert "no Hugging Face token; run 'hf auth login' or set HF_TOKEN" in done.stderr
