"""A method from another package: ``pip install examples/custom_method`` (NEFTune), then it works everywhere a
built-in method does — ``addrop train --method neftune``, its recipe section, ``--set neftune.alpha``, a sweep
against AD-DROP on its own axis, the help — with no file of ``addrop_cli`` changed. The package is installed into
a folder of its own (``pip install --target``), seen only by the subprocesses given it on PYTHONPATH."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import one_line_error

from addrop_cli.recipe import Recipe, build
from addrop_cli.sweep.plan import read_results

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "custom_method"


def addrop(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "addrop_cli", *args], capture_output=True, text=True, env=env,
                          timeout=600)


def rte_args(checkpoint: Path, data: Path) -> list[str]:
    """2 epochs of 4 updates on the 16 RTE pairs, truncated to 48 tokens."""
    sample = str(data / "RTE-sample/dev-sample.tsv")
    return ["--task", "rte", "--model", str(checkpoint), "--train-file", sample, "--validation-file", sample,
            "--epochs", "2", "--batch-size", "4", "--max-length", "48"]


def test_the_example_package_passes_its_own_tests(plugin_env):
    process = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE / "tests")],
                             capture_output=True, text=True, env=plugin_env, timeout=600)
    assert process.returncode == 0, process.stdout[-3000:]
    assert "5 passed" in process.stdout


def test_an_installed_method_trains_through_the_cli_with_its_recipe_section(plugin_env, tmp_path, tiny_checkpoint,
                                                                              shared_data):
    out = tmp_path / "run"
    process = addrop(plugin_env, "train", *rte_args(tiny_checkpoint, shared_data), "--method", "neftune",
                     "--set", "neftune.alpha=10", "--output-dir", str(out))
    assert process.returncode == 0, process.stderr
    assert "NEFTune alpha 10 (cross-tuning) | 2 epochs" in process.stdout + process.stderr
    recipe = yaml.safe_load((out / "recipe.yaml").read_text())
    assert recipe["addrop"]["method"] == "neftune" and recipe["neftune"] == {"alpha": 10.0}
    assert list(recipe).index("neftune") == list(recipe).index("addrop") + 3  # after addrop, rdrop, hiddencut
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [row["phase"] for row in history] == ["ft", "neftune"]


def test_a_sweep_compares_it_with_addrop_each_on_its_own_axes(plugin_env, tmp_path, tiny_checkpoint, shared_data):
    out = tmp_path / "sweep"
    process = addrop(plugin_env, "sweep", *rte_args(tiny_checkpoint, shared_data), "--epochs", "1",
                     "--no-cross-tuning", "--method", "addrop,neftune", "--p", "0.1", "--grid", "neftune.alpha=5,10",
                     "--baseline", "--output-dir", str(out))
    assert process.returncode == 0, process.stderr
    trials = sorted(row["trial"] for row in read_results(out))
    assert trials == sorted(["ft_seed42", "addrop_p0.1_seed42", "neftune_alpha5_seed42", "neftune_alpha10_seed42"])
    recipe = yaml.safe_load((out / "trials/neftune_alpha10_seed42/recipe.yaml").read_text())
    assert recipe["addrop"]["method"] == "neftune" and recipe["neftune"]["alpha"] == 10
    table = [line for line in (out / "summary.md").read_text().splitlines() if line.startswith("| ")]
    labels = sorted(line.split("|")[1].strip() for line in table[1:])
    assert labels == ["AD-DROP", "FT", "NEFTune", "NEFTune"]


@pytest.mark.parametrize(("flags", "fragment"), [
    (["--method", "neftune", "--set", "neftune.alpha=-1"], "neftune.alpha=-1.0 is invalid: the noise scale"),
    (["--set", "neftune.alpah=3"], "unknown recipe key 'neftune.alpah'; did you mean 'alpha'?"),
    (["--method", "neftunes"], "addrop.method='neftunes' is invalid: choose one of addrop, rdrop, hiddencut, neftune"),
])
def test_a_bad_value_for_it_is_one_line_exit_2_nothing_written(plugin_env, tmp_path, tiny_checkpoint, shared_data,
                                                                flags, fragment):
    out = tmp_path / "run"
    process = addrop(plugin_env, "train", *rte_args(tiny_checkpoint, shared_data), *flags, "--output-dir", str(out))
    assert process.returncode == 2, process.stderr
    lines = process.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], process.stderr
    assert not out.exists()


def test_the_help_names_it_and_imports_no_torch(plugin_env):
    code = ("import sys; from typer.testing import CliRunner; from addrop_cli.cli import app; "
            "out = CliRunner().invoke(app, ['train', '--help'], terminal_width=200).output; "
            "print('neftune' in out, 'NEFTune' in out, 'torch' in sys.modules)")
    process = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=plugin_env,
                             timeout=120)
    assert process.stdout.split() == ["True", "True", "False"], process.stderr


def test_a_plugin_section_is_saved_only_by_its_own_runs_so_other_recipes_read_without_it(plugin_env):
    code = ("import sys, yaml; from addrop_cli.recipe import Recipe, build; "
            "print(yaml.safe_dump([build(Recipe, {'addrop': {'method': m}}).to_dict() for m in sys.argv[1:]]))")
    process = subprocess.run([sys.executable, "-c", code, "addrop", "neftune"], capture_output=True, text=True,
                             env=plugin_env, timeout=120)
    other, own = yaml.safe_load(process.stdout)
    assert "neftune" not in other and own["neftune"] == {"alpha": 5.0}
    build(Recipe, other)  # here, without the plugin: the other run's saved recipe still reads
    one_line_error(lambda: build(Recipe, own), "unknown recipe key 'neftune'")
