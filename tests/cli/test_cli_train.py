"""``addrop train`` end to end: output contract, tiny models, the real MiniLM, and bad input."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

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


def rte_args(out, checkpoint, data, *variant):
    """2 epochs of 4 updates on the 16 RTE pairs, truncated to 48 tokens."""
    sample = str(data / "RTE-sample/dev-sample.tsv")
    return ["train", "--task", "rte", "--model", str(checkpoint), "--train-file", sample, "--validation-file", sample,
            "--epochs", "2", "--batch-size", "4", "--max-length", "48", "--output-dir", str(out), *variant]


@pytest.fixture(scope="module")
def default_rte(tmp_path_factory, tiny_checkpoint, shared_data):
    """The recipe's own settings (GA, pseudo labels, cross-tuning): what each variant is compared with."""
    out = tmp_path_factory.mktemp("default_rte") / "run"
    result = run(*rte_args(out, tiny_checkpoint, shared_data))
    assert result.exit_code == 0, result.output
    return read_history(out)


@pytest.fixture
def built_addrop(monkeypatch):
    """The ADDropConfig every ADDrop the command builds ends up with."""
    from addrop_cli.core.methods.addrop import ADDrop

    configs, original = [], ADDrop.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        configs.append(self.config)

    monkeypatch.setattr(ADDrop, "__init__", spy)
    return configs


SAME = ("train_loss", "eval_loss", "eval", "eval_predictions")
VARIANTS = {  # flags: (what recipe.yaml and the ADDrop the loop builds must hold, phases, epochs unlike the default)
    "no-addrop": (["--no-addrop"], {"enabled": False}, ["ft", "ft"], [2]),
    "iga": (["--attribution", "iga", "--set", "addrop.iga_steps=2"], {"attribution": "iga", "iga_steps": 2},
            ["ft", "addrop"], [2]),
    "rd": (["--attribution", "rd"], {"attribution": "rd"}, ["ft", "addrop"], [2]),
    "gold": (["--labels", "gold"], {"labels": "gold"}, ["ft", "addrop"], [2]),
    "no-cross-tuning": (["--no-cross-tuning"], {"cross_tuning": False}, ["addrop", "addrop"], [1, 2]),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_variants_through_the_cli(tmp_path, tiny_checkpoint, shared_data, default_rte, built_addrop, variant):
    """Each flag reaches recipe.yaml and the ADDrop the loop builds, and changes the run exactly where it should:
    the epochs it acts in differ from the default run's, the others equal it (same seed, same process)."""
    flags, settings, phases, changed = VARIANTS[variant]
    out = tmp_path / "run"
    result = run(*rte_args(out, tiny_checkpoint, shared_data, *flags))
    assert result.exit_code == 0, result.output
    saved = yaml.safe_load((out / "recipe.yaml").read_text())["addrop"]
    assert {key: saved[key] for key in settings} == settings
    if settings.get("enabled") is False:
        assert built_addrop == []
    else:
        (config,) = built_addrop
        assert {key: getattr(config, key) for key in settings} == settings
    history = read_history(out)
    assert [h["phase"] for h in history] == phases
    for row, default in zip(history, default_rte, strict=True):
        ours, theirs = ({key: h[key] for key in SAME} for h in (row, default))
        assert (ours != theirs) == (row["epoch"] in changed), f"epoch {row['epoch']}: {ours} vs {theirs}"


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


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["eval", "--checkpoint", "/nonexistent"]],
                         ids=["help", "version", "error"])
def test_python_dash_m_matches_the_console_script(args):
    """The installed ``addrop`` script (pip writes it beside this interpreter from [project.scripts]) and
    ``python -m addrop_cli`` print the same bytes and exit with the same status, errors included."""
    (entry,) = importlib.metadata.distribution("addrop").entry_points.select(group="console_scripts")
    assert (entry.name, entry.value) == ("addrop", "addrop_cli.cli:main")
    script = Path(sysconfig.get_path("scripts")) / "addrop"
    assert script.is_file(), f"{script} is missing: pip install -e . writes it"
    env = {**os.environ, "COLUMNS": "100"}
    console = subprocess.run([str(script), *args], capture_output=True, text=True, env=env)
    module = subprocess.run([sys.executable, "-m", "addrop_cli", *args], capture_output=True, text=True, env=env)
    assert (module.returncode, module.stdout, module.stderr) == (console.returncode, console.stdout, console.stderr)
    assert console.returncode == (2 if args[0] == "eval" else 0)
    assert (console.stdout + console.stderr).strip()
