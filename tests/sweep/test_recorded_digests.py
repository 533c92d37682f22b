"""Sweeps recorded before the method table (the evidence study's 66 trials, AD-DROP, R-Drop and plain
fine-tuning) keep their trial digests, so an earlier sweep resumes instead of running its trials again; installing
a method plugin changes none of them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from addrop_cli.recipe import Recipe, build
from addrop_cli.sweep.plan import recipe_digest

RECORDED = Path(__file__).resolve().parents[2] / "benchmarks" / "evidence-runs"
REPRODUCE = """
import json, sys
from pathlib import Path
from addrop_cli.sweep.plan import plan_from_manifest, read_results
rows = []
for manifest in sorted(Path(sys.argv[1]).rglob("sweep.json")):
    trials = plan_from_manifest(manifest.parent, json.loads(manifest.read_text()))
    planned = {trial.id: trial.digest for trial in trials}
    rows += [(row["trial"], row["digest"], planned.get(row["trial"])) for row in read_results(manifest.parent)]
print(json.dumps(rows))
"""


def reproduced(folder: Path, env: dict[str, str] | None = None) -> list[list[str]]:
    """(trial, recorded digest, digest planned now) for every recorded trial under ``folder``."""
    process = subprocess.run([sys.executable, "-c", REPRODUCE, str(folder)], capture_output=True, text=True, env=env,
                             timeout=300, check=True)
    return json.loads(process.stdout)


def test_recorded_sweeps_plan_the_digests_they_recorded(tmp_path):
    shutil.copytree(RECORDED, tmp_path / "runs")  # planning writes each trial's recipe into the sweep folder
    rows = reproduced(tmp_path / "runs")
    assert len(rows) >= 66 and {trial.split("_")[0] for trial, _, _ in rows} == {"ft", "addrop", "rdrop"}
    assert [row for row in rows if row[1] != row[2]] == []


def test_installing_a_method_plugin_changes_no_recorded_digest(tmp_path, plugin_env):
    shutil.copytree(RECORDED, tmp_path / "runs")
    rows = reproduced(tmp_path / "runs", plugin_env)
    assert len(rows) >= 66 and [row for row in rows if row[1] != row[2]] == []


# Digests computed at e2228a3, before the method table, for what the evidence study never ran (HiddenCut, LoRA,
# settings of unused methods, plain fine-tuning). A changed default changes them on purpose; a refactor must not.
RECIPES_BEFORE_THE_TABLE = {
    "1851949a44c9bf3c": {},
    "9f0f3682ab7097e8": {"addrop": {"method": "hiddencut"}, "hiddencut": {"ratio": 0.2, "layers": [0, 1]}},
    # LoRA's default learning rate became 2e-4 later (a changed default): the run of e2228a3 names its 2e-5.
    "e890a6dd3f3ec15a": {"addrop": {"method": "rdrop"}, "rdrop": {"alpha": 0.5}, "lora": {"r": 8},
                         "train": {"lr": 2e-5}},
    "012b0dfd9b04eca8": {"addrop": {"p": 0.1}, "rdrop": {"alpha": 4.0}, "hiddencut": {"ratio": 0.3}},
    "5a5947f416ae3847": {"addrop": {"enabled": False}, "train": {"lr": 1e-5}},
}


@pytest.mark.parametrize(("digest", "values"), RECIPES_BEFORE_THE_TABLE.items())
def test_a_recipe_keeps_the_digest_it_had_before_the_method_table(digest, values):
    assert recipe_digest(build(Recipe, values)) == digest
