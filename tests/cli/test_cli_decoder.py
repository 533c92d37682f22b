"""``addrop train`` end to end on a local tiny decoder-only classifier (Qwen2) with AD-DROP, cross-tuned."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import Qwen2Config, Qwen2Model
from typer.testing import CliRunner

from addrop_cli.cli import app

DEMO = Path(__file__).resolve().parents[2] / "addrop_cli" / "demo_data" / "sst2"


@pytest.fixture(scope="module")
def tiny_qwen2(tmp_path_factory, tiny_tokenizer) -> Path:
    """A saved 2-layer random Qwen2 (GQA, sliding window on layer 2) whose config names the pad token."""
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=100, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         use_sliding_window=True, sliding_window=6, max_window_layers=1,
                         pad_token_id=tiny_tokenizer.pad_token_id)
    directory = tmp_path_factory.mktemp("tiny_qwen2")
    Qwen2Model(config).save_pretrained(directory)
    tiny_tokenizer.save_pretrained(directory)
    return directory


def test_train_a_decoder_classifier_with_addrop(tmp_path, tiny_qwen2):
    out = tmp_path / "run"
    result = CliRunner().invoke(app, [
        "train", "--task", "sst2", "--model", str(tiny_qwen2), "--train-file", str(DEMO / "train.tsv"),
        "--validation-file", str(DEMO / "dev.tsv"), "--max-train-samples", "32", "--max-eval-samples", "24",
        "--epochs", "2", "--batch-size", "8", "--layers", "all", "--p", "0.5", "--q", "0.5",
        "--output-dir", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [row["phase"] for row in history] == ["ft", "addrop"]
    assert all(row["train_loss"] == row["train_loss"] for row in history)  # not NaN
    assert sum(history[-1]["eval_predictions"].values()) == 24
    config = json.loads((out / "best" / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForSequenceClassification"]
