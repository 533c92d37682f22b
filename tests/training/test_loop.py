"""The training loop's teardown: the process group is destroyed only once the run and its DDP model are gone."""

from __future__ import annotations

import contextlib
import weakref

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from addrop_cli.recipe import resolve_recipe
from addrop_cli.training import loop


@pytest.fixture
def gloo_group(tmp_path):
    """A one-process gloo group, as a one-process ``torchrun`` makes (destroyed afterwards if the test did not)."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


@pytest.fixture
def alive_at_destroy(monkeypatch):
    """(weakrefs to watch, what each was when ``destroy_process_group`` ran: True if still alive)."""
    watched, seen = [], []
    destroy = dist.destroy_process_group

    def recording_destroy(group=None):
        seen.append([ref() is not None for ref in watched])
        destroy(group)

    monkeypatch.setattr(dist, "destroy_process_group", recording_destroy)
    return watched, seen


def _hold_ddp(watched: list, fail: bool) -> None:
    """A frame holding a DDP model in a reference cycle (as forward hooks make), raising if ``fail``."""
    model = DistributedDataParallel(torch.nn.Linear(2, 2))
    model.cycle = [model]
    watched.append(weakref.ref(model))
    if fail:
        raise RuntimeError("the run stopped")


def _leave_ddp_behind(watched: list, failure: str) -> None:
    """What a run leaves behind: the model in its cycle; on a failure, the traceback whose frame still holds it,
    raised directly or as the context of a later error (whose own traceback does not reach that frame)."""
    if failure != "chained":
        _hold_ddp(watched, fail=failure == "raised")
        return
    try:
        _hold_ddp(watched, fail=True)
    except RuntimeError:
        raise ValueError("reporting the stop failed") from None


@pytest.mark.parametrize("failure", ["finished", "raised", "chained"])
def test_destroy_process_group_frees_a_ddp_model_left_in_a_cycle_or_a_traceback(gloo_group, alive_at_destroy,
                                                                                 failure):
    watched, seen = alive_at_destroy
    with contextlib.suppress(ValueError, RuntimeError), contextlib.ExitStack() as held:
        held.push(loop._destroy_process_group)
        _leave_ddp_behind(watched, failure)
    assert seen == [[False]]
    assert not dist.is_initialized()


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
    recipe = resolve_recipe("demo", overrides=[f"model={tiny_checkpoint}", f"train.output_dir={tmp_path / 'run'}",
                                               "train.epochs=1", "data.max_train_samples=16",
                                               "data.max_eval_samples=16"])
    with pytest.raises(RuntimeError) if failure else contextlib.nullcontext():
        loop.train(recipe)
    assert seen == [[False, False, False]]
