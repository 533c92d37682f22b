"""The training loop's teardown: the process group is destroyed only once the run, its model and its accelerator
are gone (the fixtures are in conftest.py)."""

from __future__ import annotations

import contextlib
import weakref

import pytest
from helpers import demo_recipe

from addrop_cli.training import loop


@pytest.mark.parametrize("failure", [False, True], ids=["finished", "raised"])
def test_train_destroys_the_process_group_only_after_its_run_is_gone(gloo_group, alive_at_destroy, monkeypatch,
                                                                     tiny_checkpoint, tmp_path, failure):
    watched, seen = alive_at_destroy
    setup = loop.setup

    def watched_setup(*args, **kwargs):
        run = setup(*args, **kwargs)
        watched.extend(weakref.ref(item) for item in (run, run.model, run.accelerator))
        return run

    def failing_epoch(run, progress, stop):
        raise RuntimeError("the epoch failed")

    monkeypatch.setattr(loop, "setup", watched_setup)
    if failure:
        monkeypatch.setattr(loop, "train_epoch", failing_epoch)
    recipe = demo_recipe(tiny_checkpoint, tmp_path / "run", "train.epochs=1")
    with pytest.raises(RuntimeError) if failure else contextlib.nullcontext():
        loop.train(recipe)
    assert seen == [[False, False, False]]
