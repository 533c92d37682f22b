"""Bundled recipes: each loads and validates, and they ship inside the wheel."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from addrop_cli.errors import UserError
from addrop_cli.recipe import bundled_recipes, find_recipe, resolve_path, resolve_recipe
from addrop_cli.tasks.pipelines import pipeline_for

ROOT = Path(__file__).resolve().parents[1]
GLUE = ["sst2", "mnli", "qnli", "qqp", "cola", "stsb", "mrpc", "rte"]


def test_every_glue_task_and_the_demo_have_a_recipe():
    assert set(GLUE) | {"demo"} <= set(bundled_recipes())


@pytest.mark.parametrize("name", [*GLUE, "demo", "conll2003"])
def test_recipe_loads_validates_and_documents_itself(name):
    path = find_recipe(name)
    recipe = resolve_recipe(name)
    pipeline_for(recipe)
    header = path.read_text().splitlines()[:4]
    assert all(line.startswith("#") for line in header)
    assert any("addrop train" in line for line in header)  # the exact command
    assert any("Paper" in line for line in header)  # the paper's number


def test_paper_settings_in_glue_recipes():
    layers = {"sst2": "first", "mnli": "first", "qnli": "first", "qqp": "first", "stsb": "first",
              "cola": "all", "mrpc": "all", "rte": "all"}
    lengths = {"sst2": 120, "mnli": 128, "qnli": 128, "qqp": 120, "cola": 47, "stsb": 100, "mrpc": 100, "rte": 128}
    for task in GLUE:
        recipe = resolve_recipe(task=task)
        assert recipe.addrop.layers == layers[task]
        assert recipe.data.max_length == lengths[task]
        assert (recipe.train.lr, recipe.train.batch_size, recipe.train.adam_epsilon) == (1e-5, 16, 1e-6)
        assert recipe.model == ("roberta-base" if task == "sst2" else "bert-base-uncased")


def test_precedence_recipe_then_flags_then_set():
    recipe = resolve_recipe(task="mrpc", flags={"train": {"lr": 3e-5}, "addrop": {"p": 0.5}},
                            overrides=["addrop.p=0.7"])
    assert recipe.task == "mrpc" and recipe.train.lr == 3e-5 and recipe.addrop.p == 0.7
    assert recipe.train.epochs == 50  # from the recipe


def test_no_recipe_means_demo_and_package_paths_resolve():
    recipe = resolve_recipe()
    assert recipe.model == "minilm"
    assert Path(resolve_path(recipe.data.train_file)).is_file()


def test_unknown_recipe_is_refused_with_suggestion():
    with pytest.raises(UserError, match=r"unknown recipe 'mrcp'; did you mean 'mrpc'\?"):
        find_recipe("mrcp")
    with pytest.raises(UserError, match=r"recipe file nowhere.yaml does not exist"):
        find_recipe("nowhere.yaml")


def test_recipes_and_demo_data_ship_in_the_wheel(tmp_path):
    # Skip only when the build backend itself is missing; once it imports, a failed build is a failure (a missing
    # recipes/ folder fails inside hatchling, with "hatchling" all over the traceback).
    pytest.importorskip("hatchling.build", reason="hatchling is not installed (pip install 'addrop[test]')")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    wheel = next(tmp_path.glob("addrop-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "addrop_cli/recipes/glue/mrpc.yaml" in names and "addrop_cli/recipes/demo.yaml" in names
    assert "addrop_cli/demo_data/sst2/train.tsv" in names
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True)
    probe = ("from addrop_cli.recipe import find_recipe, resolve_recipe, resolve_path; import pathlib;"
             "p = find_recipe('mrpc'); r = resolve_recipe();"
             "print(p); assert pathlib.Path(resolve_path(r.data.train_file)).is_file()")
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env={"PYTHONPATH": str(target),
                         "PATH": "/usr/bin:/bin"}, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert str(target) in out.stdout
