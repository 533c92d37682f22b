"""Ending a command's process group: only once what the command left (a DDP model in a reference cycle, an
exception's frames) is gone, and ``addrop eval`` / ``addrop predict`` end theirs (the fixtures are in conftest.py)."""

from __future__ import annotations

import contextlib
import weakref
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from helpers import demo_recipe
from torch.nn.parallel import DistributedDataParallel
from typer.testing import CliRunner

import addrop_cli
from addrop_cli.cli import app
from addrop_cli.training import evaluation, loop, process_group

DEMO_DEV = Path(addrop_cli.__file__).parent / "demo_data" / "sst2" / "dev.tsv"


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
def test_end_process_group_frees_a_ddp_model_left_in_a_cycle_or_a_traceback(gloo_group, alive_at_destroy,
                                                                             failure):
    watched, seen = alive_at_destroy
    with contextlib.suppress(ValueError, RuntimeError), contextlib.ExitStack() as held:
        held.push(process_group.end_process_group)
        _leave_ddp_behind(watched, failure)
    assert seen == [[False]]
    assert not dist.is_initialized()


@pytest.mark.parametrize("failure", ["finished", "raised", "chained"])
def test_ending_process_group_frees_what_the_command_left_before_destroying_the_group(gloo_group, alive_at_destroy,
                                                                                    failure):
    watched, seen = alive_at_destroy
    with contextlib.suppress(ValueError, RuntimeError), process_group.ending_process_group():
        _leave_ddp_behind(watched, failure)
    assert seen == [[False]]
    assert not dist.is_initialized()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_checkpoint):
    """A finished one-epoch run of the tiny BERT on the bundled SST-2 sentences (trained with no process group)."""
    out = tmp_path_factory.mktemp("trained") / "run"
    recipe = demo_recipe(tiny_checkpoint, out, "train.epochs=1")
    loop.train(recipe)
    return out


@pytest.mark.parametrize("command", ["eval", "predict"])
def test_eval_and_predict_end_the_process_group_once_the_model_is_gone(gloo_group, alive_at_destroy, monkeypatch,
                                                                        trained, tmp_path, command):
    watched, seen = alive_at_destroy
    prepare = evaluation._prepare_for_inference

    def watched_prepare(accelerator, model, loader):
        watched.append(weakref.ref(model))
        return prepare(accelerator, model, loader)

    monkeypatch.setattr(evaluation, "_prepare_for_inference", watched_prepare)
    output = tmp_path / ("metrics.json" if command == "eval" else "predictions.jsonl")
    args = ["--max-eval-samples", "16"] if command == "eval" else ["--input-file", str(DEMO_DEV)]
    result = CliRunner().invoke(app, [command, "--checkpoint", str(trained / "best"), "--output", str(output), *args])
    assert result.exit_code == 0, result.output
    assert output.is_file()
    assert not dist.is_initialized()
    assert seen == [[False]]
