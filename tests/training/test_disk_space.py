"""The disk plan's arithmetic, against sums written out by hand."""

from __future__ import annotations

import torch

from addrop_cli.training.disk_space import SMALL_FILES, DiskPlan, checkpoints_per_run, plan_disk


def test_the_peak_is_every_checkpoint_at_once_or_best_twice_whichever_is_more():
    # 3 at once: 3 x 100 + 30 = 330 > 2 x 100 + 2 x 30 = 260.
    assert DiskPlan("d", checkpoint=100, best=30, at_once=3, held=0, free=0).peak == 330 + SMALL_FILES
    # A large best/: while it is replaced (1 checkpoint kept) 10 + 2 x 100 = 210 > 2 x 10 + 100 = 120.
    assert DiskPlan("d", checkpoint=10, best=100, at_once=2, held=0, free=0).peak == 210 + SMALL_FILES


def test_what_the_run_already_holds_counts_as_room_it_has():
    plan = DiskPlan("d", checkpoint=100, best=30, at_once=3, held=250, free=80 + SMALL_FILES)
    assert plan.needed == 80 + SMALL_FILES and plan.fits
    assert not DiskPlan("d", 100, 30, 3, 250, 79 + SMALL_FILES).fits


def test_a_checkpoint_is_the_weights_once_and_two_adam_moments_of_what_trains(tmp_path, tiny_tokenizer):
    model = torch.nn.Sequential(torch.nn.Linear(10, 20), torch.nn.Linear(20, 5))
    model[1].weight.requires_grad_(False)
    weights = (10 * 20 + 20 + 20 * 5 + 5) * 4
    trained = (10 * 20 + 20 + 5) * 4
    plan = plan_disk(model, tiny_tokenizer, tmp_path / "run", keep=2, saves=5, reuse=True)
    assert plan.checkpoint == weights + 2 * trained
    assert plan.best > weights  # and the tokenizer's files
    assert plan.at_once == 3  # the 2 kept and the one being written
    assert plan_disk(model, tiny_tokenizer, tmp_path / "run", keep=None, saves=5, reuse=True).at_once == 5
    assert plan.folder == tmp_path  # the nearest folder that exists


def test_tied_weights_are_counted_once(tiny_tokenizer, tmp_path):
    model = torch.nn.Sequential(torch.nn.Embedding(50, 8), torch.nn.Linear(8, 50, bias=False))
    model[1].weight = model[0].weight
    plan = plan_disk(model, tiny_tokenizer, tmp_path, keep=1, saves=1, reuse=False)
    assert plan.checkpoint == 50 * 8 * 4 * 3  # stored once, two moments


def test_a_run_checkpoints_every_save_every_epochs_and_the_last_and_every_save_steps_updates():
    assert checkpoints_per_run(epochs=3, updates_per_epoch=10, save_steps=None) == 3
    assert checkpoints_per_run(epochs=3, updates_per_epoch=10, save_steps=5) == 3 + 6
    assert checkpoints_per_run(epochs=5, updates_per_epoch=10, save_steps=None, save_every=2) == 3  # 2, 4 and 5
