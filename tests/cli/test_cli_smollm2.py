"""The real SmolLM2-135M-Instruct through the bundled LLM recipes, a handful of steps each: generative fine-tuning
with an AD-DROP epoch, and the LoRA classification head. Skipped until ``addrop assemble smollm2-135m`` has run (CI
assembles it); the full runs and their figures are in docs/generation.md."""

from __future__ import annotations

import json

import pytest
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
from typer.testing import CliRunner

from addrop_cli.cli import app
from addrop_cli.tasks.offline_models import SMOLLM2_135M, model_dir

runner = CliRunner()
# Eight sentences, one AD-DROP epoch (no cross-tuning), short answers: the loop on the real model, not a result.
FEW = ["--max-train-samples", "8", "--max-eval-samples", "8", "--epochs", "1", "--batch-size", "4",
       "--set", "addrop.cross_tuning=false"]


@pytest.fixture(scope="module", autouse=True)
def assembled():
    if not (model_dir(SMOLLM2_135M) / SMOLLM2_135M.weights).is_file():
        pytest.skip(f"smollm2-135m is not assembled in {model_dir(SMOLLM2_135M)}: run 'addrop assemble smollm2-135m' "
                    "to include these tests")


def test_the_generative_recipe_trains_an_addrop_epoch_and_saves_a_merged_causal_lm(tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--recipe", "sst2_smollm2_generate", "--output-dir", str(out), *FEW,
                                 "--set", "generation.max_new_tokens=2"])
    assert result.exit_code == 0, result.output
    assert "PeftModelForCausalLM, 135.4M parameters, 0.9M trainable" in result.output
    [epoch] = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert epoch["phase"] == "addrop" and set(epoch["eval"]) == {"accuracy", "perplexity"}
    assert sum(epoch["eval_predictions"].values()) == 8
    model = AutoModelForCausalLM.from_pretrained(out / "best")
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_hidden_layers == 30


def test_the_lora_classification_recipe_trains_a_head_on_the_real_llm(tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--recipe", "sst2_smollm2_lora", "--output-dir", str(out), *FEW])
    assert result.exit_code == 0, result.output
    [epoch] = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert epoch["phase"] == "addrop" and sum(epoch["eval_predictions"].values()) == 8
    model = AutoModelForSequenceClassification.from_pretrained(out / "best")
    assert type(model).__name__ == "LlamaForSequenceClassification" and model.config.pad_token_id == 2
