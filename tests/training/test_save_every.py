"""``train.save_every``: the end-of-epoch checkpoint is written every N epochs and after the last; a stop signal
after an epoch it skipped still checkpoints that epoch, and the resumed run is the uninterrupted one."""

from __future__ import annotations

import json

import pytest
from helpers import demo_recipe
from safetensors.torch import load_file

from addrop_cli.training import loop
from addrop_cli.training.run_dir import BEST_DIR, CHECKPOINT_PREFIX, HISTORY_FILE, checkpoint_dirs


def train(out, checkpoint, *overrides: str, resume: bool = False) -> list[dict]:
    loop.train(demo_recipe(checkpoint, out, "train.lr=1e-3", "train.save_total_limit=null", *overrides), resume=resume)
    return [json.loads(line) for line in (out / HISTORY_FILE).read_text().splitlines()]


def step(checkpoint) -> int:
    return int(checkpoint.name.removeprefix(CHECKPOINT_PREFIX))


def test_only_every_nth_epoch_and_the_last_are_checkpointed(tmp_path, tiny_checkpoint, monkeypatch):
    checkpoint, saved_after = loop._checkpoint, []

    def watched(run):
        saved_after.append(run.state.epoch - 1)  # the epoch just ended
        return checkpoint(run)

    monkeypatch.setattr(loop, "_checkpoint", watched)
    history = train(tmp_path / "run", tiny_checkpoint, "train.epochs=5", "train.save_every=2")
    assert len(history) == 5 and saved_after == [2, 4, 5]
    assert [step(path) for path in checkpoint_dirs(tmp_path / "run")] == [2, 4, 5]  # save_total_limit is off


def test_a_stop_after_an_epoch_save_every_skipped_checkpoints_it_and_resumes_as_if_uninterrupted(
        tmp_path, tiny_checkpoint, monkeypatch):
    options = ("train.epochs=5", "train.save_every=4")
    plain = train(tmp_path / "plain", tiny_checkpoint, *options)
    end_epoch, stop_requested, signalled = loop.end_epoch, loop._stop_requested, []

    def signal_after_epoch_3(run, seconds, progress):
        end_epoch(run, seconds, progress)
        signalled.append(run.state.epoch == 4)

    monkeypatch.setattr(loop, "end_epoch", signal_after_epoch_3)
    monkeypatch.setattr(loop, "_stop_requested", lambda stop, accelerator: bool(signalled) and signalled.pop())
    with pytest.raises(loop.TrainingInterrupted) as stopped:
        train(tmp_path / "run", tiny_checkpoint, *options)
    assert step(stopped.value.checkpoint) == 3  # epochs of one update each: epoch 3, though save_every skipped it
    monkeypatch.setattr(loop, "end_epoch", end_epoch)
    monkeypatch.setattr(loop, "_stop_requested", stop_requested)
    resumed = train(tmp_path / "run", tiny_checkpoint, *options, resume=True)
    assert [row["train_loss"] for row in resumed] == [row["train_loss"] for row in plain]
    assert [row["eval"] for row in resumed] == [row["eval"] for row in plain]
    weights = [load_file(folder / BEST_DIR / "model.safetensors") for folder in (tmp_path / "plain", tmp_path / "run")]
    assert all(weights[0][name].equal(weights[1][name]) for name in weights[0])
