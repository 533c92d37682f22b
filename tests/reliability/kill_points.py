"""Kill a checkpoint write at each of its steps (run as a script by test_kill_points.py).

A tiny model is trained one step and checkpointed (the old state); then, for every step of the next write, a
forked child arms a SIGKILL at that step and writes the new state. A step is a file-system call Python can see
(mkdir, open for writing, rename, unlink, rmdir, rmtree) or the start or end of one of the files torch and
safetensors write. After each kill the folder is recovered as the next start does, and compared with the old
folder and with the new one an unkilled child wrote. Prints one JSON line per kill:
``{"scenario", "step", "event", "killed", "result", "leftovers"}``, the result being "old", "new", "old and new"
(both whole: the new one arrived and the old one was not deleted yet) or what else was found.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import sys
from pathlib import Path

import accelerate.utils.other
import safetensors.torch
import torch
import transformers.modeling_utils
from accelerate import Accelerator
from transformers import BertConfig, BertForSequenceClassification

from addrop_cli.outputs import recover_dir, write_dir
from addrop_cli.training.checkpoints import TrainingState, recover_checkpoints, save_checkpoint

WATCHED = {"os.mkdir", "os.rename", "os.remove", "os.rmdir", "shutil.rmtree", "open"}


def tree(path: Path) -> dict[str, str]:
    """Relative file path -> SHA-256 of its bytes, for every file under ``path`` (hidden ones included)."""
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def _writes(path, mode, flags) -> bool:
    """Whether an ``open`` audit event opens for writing (``open()`` gives a mode, ``os.open`` flags)."""
    if isinstance(mode, str):
        return bool(set(mode) & set("wax+"))
    return bool(flags & (os.O_WRONLY | os.O_RDWR))


class Killer:
    """Counts steps in this process; SIGKILLs it at step ``at`` (never with ``at`` 0)."""

    def __init__(self, at: int):
        self.at, self.count, self.events = at, 0, []

    def step(self, name: str) -> None:
        self.count += 1
        self.events.append(name)
        if self.count == self.at:
            os.kill(os.getpid(), signal.SIGKILL)

    def audit(self, name: str, args: tuple) -> None:
        if name not in WATCHED:
            return
        if name == "open" and not _writes(*args):
            return  # reads are not steps of a write
        self.step(name)

    def wrap(self, owner, attribute: str) -> None:
        original = getattr(owner, attribute)

        def wrapped(*args, **kwargs):
            self.step(f"{attribute} start")
            result = original(*args, **kwargs)
            self.step(f"{attribute} end")
            return result

        setattr(owner, attribute, wrapped)


def in_child(at: int, write) -> tuple[int, list[str]]:
    """Run ``write()`` in a forked child killed at step ``at``; (its wait status, the steps it counted)."""
    reader, writer = os.pipe()
    python_rng = random.getstate()
    pid = os.fork()
    if pid == 0:
        random.setstate(python_rng)  # random reseeds itself in a forked child; Accelerate saves its state
        os.close(reader)
        killer = Killer(at)
        sys.addaudithook(killer.audit)
        killer.wrap(torch, "save")
        killer.wrap(accelerate.utils.other, "safe_save_file")
        killer.wrap(safetensors.torch, "save_file")
        killer.wrap(transformers.modeling_utils, "safe_save_file")
        write()
        os.write(writer, json.dumps(killer.events).encode())
        os._exit(0)
    os.close(writer)
    with os.fdopen(reader) as pipe:
        events = pipe.read()
    _, status = os.waitpid(pid, 0)
    return status, json.loads(events) if events else []


def scenario(name: str, folder: Path, make_old, write_new, recover, compared) -> None:
    """Kill ``write_new`` at every step; after each, ``recover`` and report whether ``compared(folder)`` is the
    old or the new tree."""
    make_old()
    pristine = folder.with_name(folder.name + ".pristine")
    shutil.copytree(folder, pristine)
    old = tree(compared(folder))
    status, events = in_child(0, write_new)
    assert status == 0, f"{name}: the unkilled write failed ({status})"
    new = tree(compared(folder))
    for at, event in enumerate(events, start=1):
        shutil.rmtree(folder)
        shutil.copytree(pristine, folder)
        status, _ = in_child(at, write_new)
        recover(folder)
        found = tree(compared(folder)) if compared(folder).exists() else {}
        result = "old" if found == old else "new" if found == new else \
            "old and new" if found == old | new else f"neither: {sorted(found)}"
        leftovers = sorted(str(p.relative_to(folder)) for p in folder.rglob(".*"))
        print(json.dumps({"scenario": name, "step": at, "event": event, "killed": os.WIFSIGNALED(status),
                          "result": result, "leftovers": leftovers}), flush=True)


def main(root: Path) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=37, max_position_embeddings=64)
    accelerator = Accelerator(cpu=True)
    model = BertForSequenceClassification(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model, optimizer = accelerator.prepare(model, optimizer)
    batch = {"input_ids": torch.randint(5, 100, (4, 12)), "labels": torch.tensor([0, 1, 0, 1])}

    def step() -> None:
        accelerator.backward(model(**batch).loss)
        optimizer.step()
        optimizer.zero_grad()

    run = root / "run"
    state = TrainingState(global_step=1)

    def first_checkpoint() -> None:
        step()
        save_checkpoint(accelerator, run, state, keep=1)
        step()  # the new checkpoints hold other weights than the old one

    checkpoints = run / "checkpoints"
    # A later step, whose save deletes the old checkpoint (keep 1): old or new must survive, whole.
    scenario("next step, keep 1", run, first_checkpoint,
             lambda: save_checkpoint(accelerator, run, TrainingState(global_step=2), keep=1),
             recover_checkpoints, lambda _: checkpoints)
    # The epoch-end save that supersedes a step save at the same update.
    shutil.rmtree(run)
    shutil.rmtree(run.with_name("run.pristine"))
    scenario("same step superseded", run, first_checkpoint,
             lambda: save_checkpoint(accelerator, run, TrainingState(global_step=1, epoch=2), keep=2),
             recover_checkpoints, lambda _: checkpoints)
    # best/ replaced through write_dir.
    best = root / "out" / "best"
    scenario("best/ replaced", best.parent,
             lambda: write_dir(best, lambda tmp: accelerator.unwrap_model(model).save_pretrained(tmp)),
             lambda: (step(), write_dir(best, lambda tmp: accelerator.unwrap_model(model).save_pretrained(tmp))),
             lambda _: recover_dir(best), lambda _: best)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
