"""The training loop's teardown: the process group goes only after the run's DDP model is gone."""

from __future__ import annotations

import contextlib
import weakref

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from addrop_cli.training import loop


@pytest.fixture
def gloo_group(tmp_path):
    """A one-process gloo group, as a one-process ``torchrun`` makes (destroyed afterwards if the test did not)."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


def _run_holding_ddp(models: list, fail: bool) -> None:
    """What a run leaves behind: a DDP model in a reference cycle (as forward hooks make), and on a failure a
    traceback whose frame still holds it."""
    model = DistributedDataParallel(torch.nn.Linear(2, 2))
    model.cycle = [model]
    models.append(weakref.ref(model))
    if fail:
        raise RuntimeError("the run stopped")


@pytest.mark.parametrize("fail", [False, True], ids=["finished", "raised"])
def test_the_process_group_is_destroyed_only_after_the_ddp_model_is_gone(gloo_group, monkeypatch, fail):
    models, alive_at_destroy = [], []
    destroy = dist.destroy_process_group

    def recording_destroy(group=None):
        alive_at_destroy.append(models[0]() is not None)
        destroy(group)

    monkeypatch.setattr(dist, "destroy_process_group", recording_destroy)
    with contextlib.suppress(RuntimeError), contextlib.ExitStack() as held:
        held.push(loop._destroy_process_group)
        _run_holding_ddp(models, fail)
    assert alive_at_destroy == [False]
    assert not dist.is_initialized()
