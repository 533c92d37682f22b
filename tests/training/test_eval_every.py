"""``train.eval_every``: only every Nth epoch and the last are evaluated, and the best checkpoint and early stopping
go by those evaluations alone. Each evaluation runs for real, then its accuracy is replaced by a scripted score
for its epoch; the weights each evaluation saw are kept, to compare with what ``best/`` holds."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest
import torch
from helpers import demo_recipe
from safetensors.torch import load_file

from addrop_cli.tasks.pipelines import SequencePipeline
from addrop_cli.training import loop
from addrop_cli.training.checkpoints import TrainingState
from addrop_cli.training.run_dir import BEST_DIR, HISTORY_FILE, METRICS_FILE


@dataclass
class Script:
    scores: dict[int, float]  # epoch -> the accuracy its evaluation reports
    seen: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)  # epoch -> the weights evaluated
    runs: list = field(default_factory=list)


@pytest.fixture
def script(monkeypatch):
    script = Script({})
    setup, evaluate = loop.setup, SequencePipeline.evaluate

    def watched_setup(*args, **kwargs):
        script.runs.append(setup(*args, **kwargs))
        return script.runs[-1]

    def scripted_evaluate(self, model, loader, accelerator, tokenizer):
        result = evaluate(self, model, loader, accelerator, tokenizer)
        epoch = script.runs[-1].state.epoch
        script.seen[epoch] = {k: v.detach().clone() for k, v in accelerator.unwrap_model(model).state_dict().items()}
        result.metrics["accuracy"] = script.scores[epoch]
        return result

    monkeypatch.setattr(loop, "setup", watched_setup)
    monkeypatch.setattr(SequencePipeline, "evaluate", scripted_evaluate)
    return script


def train(tmp_path, checkpoint, *overrides: str, resume: bool = False) -> tuple[list[dict], dict]:
    out = tmp_path / "run"
    loop.train(demo_recipe(checkpoint, out, "train.lr=1e-3", *overrides), resume=resume)
    history = [json.loads(line) for line in (out / HISTORY_FILE).read_text().splitlines()]
    return history, json.loads((out / METRICS_FILE).read_text())


def test_only_every_nth_epoch_and_the_last_are_evaluated_and_best_holds_the_best_evaluated_weights(
        tmp_path, tiny_checkpoint, script, capsys):
    script.scores.update({2: 0.5, 4: 0.9, 5: 0.7})
    history, metrics = train(tmp_path, tiny_checkpoint, "train.epochs=5", "train.eval_every=2")
    assert "note: train.eval_every=2 with cross-tuning evaluates only addrop epochs" in capsys.readouterr().err
    assert [row["epoch"] for row in history] == [1, 2, 3, 4, 5]
    assert [row["epoch"] for row in history if "eval" in row] == sorted(script.seen) == [2, 4, 5]
    assert all("eval_loss" not in row and row["train_loss"] > 0 for row in history if row["epoch"] in (1, 3))
    assert metrics["best_epoch"] == 4 and metrics["eval"]["accuracy"] == 0.9 and metrics["finished"]
    best = load_file(tmp_path / "run" / BEST_DIR / "model.safetensors")
    shared = best.keys() & script.seen[4].keys()
    assert shared and all(torch.equal(best[k], script.seen[4][k]) for k in shared)
    assert not all(torch.equal(best[k], script.seen[5][k]) for k in shared)  # training moved the weights on
    card = (tmp_path / "run" / BEST_DIR / "README.md").read_text().splitlines()
    assert [line.count("–") for line in card if line.startswith(("| 1 |", "| 2 |"))] == [2, 0]  # loss, accuracy


def test_patience_counts_evaluations_not_epochs(tmp_path, tiny_checkpoint, script):
    script.scores.update({2: 0.9, 4: 0.5, 6: 0.5, 8: 0.95, 10: 0.95})
    history, metrics = train(tmp_path, tiny_checkpoint, "train.epochs=10", "train.eval_every=2", "train.patience=2")
    assert len(history) == 6 and sorted(script.seen) == [2, 4, 6]  # two evaluations without gain after epoch 2
    assert metrics["best_epoch"] == 2 and metrics["finished"]


def test_a_run_resumed_after_an_unevaluated_epoch_keeps_its_best_and_patience(tmp_path, tiny_checkpoint, script,
                                                                             monkeypatch):
    script.scores.update({2: 0.9, 4: 0.5, 6: 0.5, 8: 0.95, 10: 0.95})
    options = ("train.epochs=10", "train.eval_every=2", "train.patience=2", "train.save_total_limit=1")
    train_epoch, calls = loop.train_epoch, []

    def stopped_before_epoch_6(run, progress, stop):
        calls.append(run.state.epoch)
        if len(calls) == 6:  # epochs 1 to 5 are checkpointed, 5 unevaluated; 2 is best, 4 a stale evaluation
            raise KeyboardInterrupt
        return train_epoch(run, progress, stop)

    monkeypatch.setattr(loop, "train_epoch", stopped_before_epoch_6)
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path, tiny_checkpoint, *options)
    monkeypatch.setattr(loop, "train_epoch", train_epoch)
    history, metrics = train(tmp_path, tiny_checkpoint, *options, resume=True)
    assert [row["epoch"] for row in history] == [1, 2, 3, 4, 5, 6]  # stopped after the second stale evaluation
    assert sorted(script.seen) == [2, 4, 6] and metrics["best_epoch"] == 2 and metrics["finished"]
    best = load_file(tmp_path / "run" / BEST_DIR / "model.safetensors")
    assert all(torch.equal(best[k], script.seen[2][k]) for k in best.keys() & script.seen[2].keys())


def test_a_checkpoint_written_before_eval_every_reads_its_stale_epochs_as_stale_evaluations():
    state = TrainingState.from_json(json.dumps({"epoch": 5, "best_epoch": 3, "best_value": 0.8, "stale_epochs": 1}))
    assert state.stale_evaluations == 1 and state.best_epoch == 3 and state.best_value == 0.8
