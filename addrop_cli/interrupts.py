"""SIGINT/SIGTERM as a flag checked between units of work, shared by the training loop and the sweep runner."""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
    """A stop signal arrived and the work in progress was saved; the exit code is 128 + the signal number."""

    def __init__(self, signum: int, message: str):
        self.signum = signum
        super().__init__(message)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


class StopRequest:
    """While entered, SIGINT/SIGTERM set :attr:`signum` (and call ``on_signal``) instead of raising.

    The previous handlers are restored on exit. The work checks :attr:`requested` at points where stopping
    leaves a consistent state (between training steps, between trials).
    """

    def __init__(self, on_signal: Callable[[int], None] | None = None) -> None:
        self.signum: int | None = None
        self._on_signal = on_signal
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def __enter__(self) -> StopRequest:
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = self.signum or signum
        if self._on_signal is not None:
            self._on_signal(signum)

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
