"""``--method rdrop|hiddencut``: the baselines through the same loop, recipe, errors and sweeps."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from typer.testing import CliRunner

from addrop_cli.cli import app
from addrop_cli.sweep.plan import read_results

runner = CliRunner()


def rte_args(out, checkpoint, data, *variant):
    """2 epochs of 4 updates on the 16 RTE pairs, truncated to 48 tokens."""
    sample = str(data / "RTE-sample/dev-sample.tsv")
    return ["--task", "rte", "--model", str(checkpoint), "--train-file", sample, "--validation-file", sample,
            "--epochs", "2", "--batch-size", "4", "--max-length", "48", *variant]


def history_of(out):
    return [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory, tiny_checkpoint, shared_data):
    out = tmp_path_factory.mktemp("plain") / "run"
    result = runner.invoke(app, ["train", *rte_args(out, tiny_checkpoint, shared_data), "--output-dir", str(out)])
    assert result.exit_code == 0, result.output
    return history_of(out)


@pytest.mark.parametrize(("method", "settings"), [("rdrop", {"alpha": 0.5}), ("hiddencut", {"ratio": 0.2})])
def test_a_baseline_trains_in_the_regularized_epochs_only(tmp_path, tiny_checkpoint, shared_data, plain_run, method,
                                                         settings):
    out = tmp_path / "run"
    overrides = [f"--set={method}.{key}={value}" for key, value in settings.items()]
    result = runner.invoke(app, ["train", *rte_args(out, tiny_checkpoint, shared_data), "--method", method,
                                 *overrides, "--output-dir", str(out)])
    assert result.exit_code == 0, result.output
    recipe = yaml.safe_load((out / "recipe.yaml").read_text())
    assert recipe["addrop"]["method"] == method and recipe[method] | settings == recipe[method]
    history = history_of(out)
    assert [row["phase"] for row in history] == ["ft", method]
    # Same seed: the fine-tuning epoch is the plain run's; the regularized one is not.
    assert history[0]["train_loss"] == plain_run[0]["train_loss"]
    assert history[1]["train_loss"] != plain_run[1]["train_loss"]


@pytest.mark.parametrize(("flags", "fragments"), [
    (["--method", "dropout"], ["addrop.method='dropout'", "addrop, rdrop, hiddencut"]),
    (["--method", "rdrop", "--set", "rdrop.alpha=-1"], ["rdrop.alpha=-1", "a weight >= 0"]),
    (["--method", "hiddencut", "--set", "hiddencut.ratio=1.5"], ["hiddencut.ratio=1.5", "strictly between 0 and 1"]),
    (["--set", "hiddencut.select_ratio=0"], ["hiddencut.select_ratio=0", "in (0, 1]"]),
])
def test_bad_method_values_are_one_line_exit_2_nothing_written(tmp_path, tiny_checkpoint, shared_data, flags,
                                                               fragments):
    out = tmp_path / "run"
    process = subprocess.run([sys.executable, "-m", "addrop_cli", "train",
                              *rte_args(out, tiny_checkpoint, shared_data), *flags, "--output-dir", str(out)],
                             capture_output=True, text=True, timeout=300)
    assert process.returncode == 2, process.stderr
    lines = process.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), process.stderr
    assert all(fragment in lines[0] for fragment in fragments), lines[0]
    assert not out.exists()


def test_sweep_compares_methods_each_with_its_own_axes(tmp_path, tiny_checkpoint, shared_data):
    out = tmp_path / "sweep"
    result = runner.invoke(app, ["sweep", *rte_args(out, tiny_checkpoint, shared_data), "--epochs", "1",
                                 "--no-cross-tuning", "--method", "addrop,rdrop,hiddencut", "--p", "0.1,0.3",
                                 "--grid", "rdrop.alpha=0.5,1", "--baseline", "--output-dir", str(out)])
    assert result.exit_code == 0, result.output
    rows = {row["trial"]: row for row in read_results(out)}
    assert sorted(rows) == sorted(["ft_seed42", "addrop_p0.1_seed42", "addrop_p0.3_seed42", "rdrop_alpha0.5_seed42",
                                   "rdrop_alpha1_seed42", "hiddencut_seed42"])
    recipe = yaml.safe_load((out / "trials/rdrop_alpha0.5_seed42/recipe.yaml").read_text())
    assert recipe["addrop"]["method"] == "rdrop" and recipe["rdrop"]["alpha"] == 0.5
    summary = (out / "summary.md").read_text()
    table = [line for line in summary.splitlines() if line.startswith("| ") and "---" not in line]
    labels = [line.split("|")[1].strip() for line in table]
    assert sorted(labels[1:]) == sorted(["FT", "AD-DROP", "AD-DROP", "R-Drop", "R-Drop", "HiddenCut"])
    csv_kinds = [line.split(",")[0] for line in (out / "summary.csv").read_text().splitlines()[1:]]
    assert sorted(csv_kinds) == sorted(["ft", "addrop", "addrop", "rdrop", "rdrop", "hiddencut"])


def test_sweep_refuses_an_axis_no_swept_method_uses(tmp_path, tiny_checkpoint, shared_data):
    out = tmp_path / "sweep"
    result = runner.invoke(app, ["sweep", *rte_args(out, tiny_checkpoint, shared_data), "--method", "rdrop",
                                 "--p", "0.1,0.3", "--output-dir", str(out)])
    assert result.exit_code == 2
    assert "addrop.p is swept but shapes none of the methods swept (rdrop)" in result.stderr
    assert not out.exists()
