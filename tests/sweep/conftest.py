"""Sweep fixtures: data and a tiny model on which p, seed and lr each change a trial's result."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

NEUTRAL = ["the", "an", "is", "was", "and", "of", "to", "in", "it", "this", "that", "movie", "film", "cat", "dog",
           "man", "woman", "sat", "on", "mat", "very", ".", ","]


def cue_sentences(count: int, seed: int) -> str:
    """An SST-2 file: 4-9 neutral words of the tiny vocabulary with one cue word (good, great: 1; bad, not: 0)."""
    rng = random.Random(seed)
    rows = ["sentence\tlabel"]
    for index in range(count):
        label = index % 2
        words = rng.choices(NEUTRAL, k=rng.randint(4, 9))
        words.insert(rng.randrange(len(words) + 1), rng.choice(["good", "great"] if label else ["bad", "not"]))
        rows.append(f"{' '.join(words)}\t{label}")
    return "\n".join(rows) + "\n"


@pytest.fixture(scope="session")
def cue_data(tmp_path_factory) -> Path:
    """64 training and 24 validation sentences, balanced, that the tiny model starts to learn in 2 epochs."""
    folder = tmp_path_factory.mktemp("cue_data")
    (folder / "train.tsv").write_text(cue_sentences(64, seed=1), encoding="utf-8")
    (folder / "dev.tsv").write_text(cue_sentences(24, seed=2), encoding="utf-8")
    return folder


@pytest.fixture(scope="session")
def unbroken_sweep(tmp_path_factory, learnable_checkpoint, cue_data) -> Path:
    """test_sweep's retry grid run in this process without interruption, on one thread: what a retried trial,
    local or on Ray, must equal."""
    from test_sweep import RETRY_GRID, learnable_sweep_args, one_thread, runner

    from addrop_cli.cli import app

    out = tmp_path_factory.mktemp("unbroken") / "sweep"
    with one_thread():
        result = runner.invoke(app, learnable_sweep_args(out, learnable_checkpoint, cue_data, *RETRY_GRID))
    assert result.exit_code == 0, result.output
    return out
