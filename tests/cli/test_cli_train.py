"""``addrop train`` end to end: output contract, tiny models, the real MiniLM, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from helpers import run_without_addrop
from typer.testing import CliRunner

from addrop_cli.cli import app

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def read_history(path):
    return [json.loads(line) for line in (path / "history.jsonl").read_text().splitlines()]


def test_tiny_model_on_mrpc_files_writes_the_output_contract(tmp_path, tiny_checkpoint, shared_data):
    out = tmp_path / "run"
    result = run("train", "--task", "mrpc", "--model", str(tiny_checkpoint),
                 "--train-file", str(shared_data / "MRPC/train.tsv"),
                 "--validation-file", str(shared_data / "MRPC/dev.tsv"), "--max-train-samples", "48",
                 "--max-eval-samples", "40", "--epochs", "3", "--output-dir", str(out), "--layers", "all",
                 "--set", "train.lr=1e-4")
    assert result.exit_code == 0, result.output
    history = read_history(out)
    assert [h["phase"] for h in history] == ["ft", "addrop", "ft"]
    for row in history:
        assert set(row) >= {"epoch", "phase", "train_loss", "eval", "seconds", "train_samples_per_second"}
        assert set(row["eval"]) == {"accuracy", "f1"}
        assert sum(row["eval_predictions"].values()) == 40
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "mrpc" and metrics["model"] == str(tiny_checkpoint)
    assert metrics["eval"] == history[metrics["best_epoch"] - 1]["eval"]
    recipe = yaml.safe_load((out / "recipe.yaml").read_text())
    assert recipe["train"]["seed"] == 42 and recipe["train"]["lr"] == 1e-4 and recipe["addrop"]["layers"] == "all"
    assert "transformers" in (out / "recipe.yaml").read_text().splitlines()[0]  # package versions
    assert (out / "best" / "model.safetensors").is_file()
    assert not list(out.glob(".*"))  # no temporary leftovers


@pytest.mark.parametrize("variant", [["--no-addrop"], ["--no-cross-tuning", "--attribution", "iga",
                                                        "--set", "addrop.iga_steps=2"],
                                     ["--attribution", "rd", "--labels", "gold"]])
def test_variants_through_the_cli(tmp_path, tiny_checkpoint, shared_data, variant):
    out = tmp_path / "run"
    result = run("train", "--task", "rte", "--model", str(tiny_checkpoint),
                 "--train-file", str(shared_data / "RTE-sample/dev-sample.tsv"),
                 "--validation-file", str(shared_data / "RTE-sample/dev-sample.tsv"), "--epochs", "2",
                 "--batch-size", "4", "--output-dir", str(out), *variant)
    assert result.exit_code == 0, result.output
    phases = [h["phase"] for h in read_history(out)]
    expected = {"--no-addrop": ["ft", "ft"], "--no-cross-tuning": ["addrop", "addrop"]}
    assert phases == expected.get(variant[0], ["ft", "addrop"])


def test_regression_task_trains_and_reports_correlations(tmp_path, tiny_checkpoint, shared_data):
    out = tmp_path / "run"
    sample = str(shared_data / "STS-B-sample/dev-sample.tsv")
    result = run("train", "--task", "stsb", "--model", str(tiny_checkpoint), "--train-file", sample,
                 "--validation-file", sample, "--epochs", "2", "--batch-size", "4", "--output-dir", str(out))
    assert result.exit_code == 0, result.output
    assert set(read_history(out)[-1]["eval"]) == {"pearson", "spearman"}


@pytest.mark.slow
def test_minilm_mrpc_end_to_end_eval_reproduces_and_loads_without_addrop(tmp_path, shared_data):
    out = tmp_path / "mrpc"
    result = run("train", "--task", "mrpc", "--model", "minilm",
                 "--train-file", str(shared_data / "MRPC/train.tsv"),
                 "--validation-file", str(shared_data / "MRPC/dev.tsv"),
                 "--max-train-samples", "64", "--epochs", "2", "--output-dir", str(out))
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert [h["phase"] for h in read_history(out)] == ["ft", "addrop"]

    evaluated = run("eval", "--checkpoint", str(out / "best"), "--output", str(tmp_path / "eval.json"))
    assert evaluated.exit_code == 0, evaluated.output
    assert "accuracy" in evaluated.output
    scores = json.loads((tmp_path / "eval.json").read_text())["eval"]
    assert scores == pytest.approx(metrics["eval"], abs=1e-6)

    # best/ is a plain transformers checkpoint: load and run it with addrop made unimportable.
    script = (
        "from transformers import AutoModelForSequenceClassification, AutoTokenizer\n"
        f"path = {str(out / 'best')!r}\n"
        "model = AutoModelForSequenceClassification.from_pretrained(path)\n"
        "tokens = AutoTokenizer.from_pretrained(path)('A cat sat.', 'A cat was sitting.', return_tensors='pt')\n"
        "print(model.config.id2label, tuple(model(**tokens).logits.shape))\n"
    )
    loaded = run_without_addrop(script)
    assert loaded.returncode == 0, loaded.stderr
    assert "(1, 2)" in loaded.stdout and "equivalent" in loaded.stdout


@pytest.mark.slow
def test_demo_recipe_runs(tmp_path):
    out = tmp_path / "demo"
    result = run("train", "--output-dir", str(out), "--max-train-samples", "96", "--max-eval-samples", "64")
    assert result.exit_code == 0, result.output
    assert [h["phase"] for h in read_history(out)] == ["ft", "addrop"]
    assert yaml.safe_load((out / "recipe.yaml").read_text())["model"] == "minilm"


def test_python_dash_m_matches_the_console_script():
    module = subprocess.run([sys.executable, "-m", "addrop_cli", "--help"], capture_output=True, text=True)
    assert module.returncode == 0
    assert "train" in module.stdout and "eval" in module.stdout
