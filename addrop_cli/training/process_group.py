"""The end of a command's distributed session (one process per rank under ``torchrun``): the process group is
destroyed once what held it is gone, and the main process is the one that prints and writes."""

from __future__ import annotations

import contextlib
import gc
import traceback
from collections.abc import Iterator

import torch
from accelerate import PartialState


def end_process_group(exc_type, exc, tb) -> None:
    """Destroy the process group, if there is one, once the command's objects are unreachable: an exit callback
    (``ExitStack.push``) pushed before anything that holds the group.

    DDP's reducer holds the gloo process group. Were the reducer its last holder, the group's destructor would
    join gloo's worker threads while holding the GIL, and a worker still freeing the last collective's tensors
    waits for the GIL: a hang at exit in about 1 of 10 two-process CPU runs (pytorch/pytorch#56297). So the
    command's objects are freed first (their reference cycles, and the frames of an exception and of the
    exceptions it chains), and the group's last reference is torch's own Python one, whose release gives up the
    GIL before the join.
    """
    if not torch.distributed.is_initialized():
        return
    free_command_objects(exc_type, exc, tb)
    torch.distributed.destroy_process_group()


def free_command_objects(exc_type, exc, tb) -> None:
    """Free what a finished command (or trial) held: the frames of its exception chain and its reference cycles,
    so that its model and optimizer go before the next one loads (an exit callback, as ``end_process_group``)."""
    for error in _exception_chain(exc):
        traceback.clear_frames(error.__traceback__)
    gc.collect()


def _exception_chain(error: BaseException | None) -> list[BaseException]:
    """``error`` and every exception it was raised from or while handling (``__cause__``, ``__context__``)."""
    chain, pending = [], [error]
    while pending:
        current = pending.pop()
        if current is not None and not any(current is seen for seen in chain):
            chain.append(current)
            pending += [current.__cause__, current.__context__]
    return chain


_sessions = 0  # ending_process_group blocks entered and not yet left in this process


@contextlib.contextmanager
def ending_process_group() -> Iterator[None]:
    """A whole command's distributed session (``addrop train``, ``eval``, ``predict``, ``sweep``): on leaving, also on
    an error, the process group is ended with :func:`end_process_group`. Outside ``torchrun`` there is none to end.

    Sessions nest: the trials of an in-process sweep are each a ``train``, and only the sweep's own session, the
    outermost, ends the group (ended after the first trial, the next could not start); an inner one only frees
    what its command held.
    """
    global _sessions
    _sessions += 1
    try:
        with contextlib.ExitStack() as held:
            held.push(end_process_group if _sessions == 1 else free_command_objects)
            yield
    finally:
        _sessions -= 1


def is_main_process() -> bool:
    """Whether this process prints and writes a command's outputs: rank 0 under ``torchrun``, else True.

    Ask only once the command's Accelerator exists: a PartialState made before it would not know that
    ``ACCELERATE_USE_CPU`` asks for gloo on the CPU, and would fix this process's state as not distributed.
    """
    return PartialState().is_main_process
