"""``addrop sweep`` checks every input before it writes anything, and ``--force`` replaces a trial's earlier run
the way ``addrop train --overwrite`` does: only once the new run has started."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from helpers import tree_hash

from addrop_cli.training.run_dir import PREVIOUS_RUN_DIR

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}


def sweep(model, out, *extra) -> subprocess.CompletedProcess:
    args = ["sweep", "--recipe", "demo", "--model", model, "--max-train-samples", "16", "--max-eval-samples", "16",
            "--epochs", "1", "--batch-size", "8", "--p", "0.3", "--q", "0.3", "--output-dir", out, *extra]
    return subprocess.run([sys.executable, "-m", "addrop_cli", *map(str, args)], capture_output=True, text=True,
                          env=ENV, timeout=300)


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory, tiny_checkpoint):
    out = tmp_path_factory.mktemp("sweeps") / "sweep"
    result = sweep(tiny_checkpoint, out)
    assert result.returncode == 0, result.stderr
    return out


@pytest.mark.parametrize("problem", ["bad-model-id", "missing-train-file"])
def test_a_forced_sweep_with_a_bad_input_leaves_the_finished_sweep_byte_identical(problem, finished_sweep,
                                                                                   tiny_checkpoint, tmp_path):
    before = tree_hash(finished_sweep)
    model, extra, expected = {
        "bad-model-id": ("no-such/model-xyz", [], "no-such/model-xyz"),
        "missing-train-file": (tiny_checkpoint, ["--train-file", tmp_path / "nope.tsv"], "nope.tsv"),
    }[problem]
    result = sweep(model, finished_sweep, "--force", "--lr", "1e-3", *extra)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr
    assert tree_hash(finished_sweep) == before


def test_force_replaces_a_trial_run_only_through_the_new_run(finished_sweep, tiny_checkpoint, tmp_path):
    out = tmp_path / "sweep"
    subprocess.run(["cp", "-a", str(finished_sweep), str(out)], check=True)
    trial = next((out / "trials").iterdir())
    refused = sweep(tiny_checkpoint, out, "--lr", "1e-3")
    assert refused.returncode == 2 and "--force" in refused.stderr, refused.stderr
    result = sweep(tiny_checkpoint, out, "--force", "--lr", "1e-3")
    assert result.returncode == 0, result.stderr
    assert "lr: 0.001" in (trial / "recipe.yaml").read_text()
    assert "lr: 0.001" in (trial / "best" / "recipe.yaml").read_text()
    assert not list(trial.glob(f"{PREVIOUS_RUN_DIR}*"))
