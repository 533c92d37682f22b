"""Fixtures for the process-group teardown tests (test_loop.py, test_process_group.py)."""

from __future__ import annotations

import pytest
import torch.distributed as dist


@pytest.fixture
def gloo_group(tmp_path):
    """A one-process gloo group, made directly (Accelerate, seeing no ``torchrun`` variables, does not wrap models
    in DDP under it); destroyed afterwards if the test did not."""
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
