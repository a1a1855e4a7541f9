"""Ctrl-C and SIGTERM: stop promptly, leave nothing behind, resume identically.

The command line installs :func:`stopping_on_signals` around a run: SIGINT (Ctrl-C, sent
to the whole process group) and SIGTERM both raise :class:`Interrupted` in the
coordinator, which closes its executor — local workers are terminated (they ignore
SIGINT themselves, so they neither print a traceback nor race the coordinator), Ray
actors are killed and a Ray instance mcstudy started is shut down — and removes its
temporary files. Writing a finished unit into the store is a critical section
(:func:`critical`): a signal that arrives during it takes effect right after, so a unit
is either wholly written and marked done, or not marked done (and recomputed on resume).
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from types import FrameType
from typing import Iterator


class Interrupted(KeyboardInterrupt):
    """The run was stopped by SIGINT or SIGTERM (``signal`` names which)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        """The shell's convention: 128 + the signal's number (130 for Ctrl-C, 143 for SIGTERM)."""
        return 128 + self.signum


_state = {"depth": 0, "pending": 0}


def _handler(signum: int, frame: FrameType | None) -> None:
    if _state["depth"] > 0:
        _state["pending"] = signum  # raised when the critical section ends
        return
    raise Interrupted(signum)


@contextmanager
def stopping_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`Interrupted` in the main thread (restored after)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in before:
        signal.signal(s, _handler)
    try:
        yield
    finally:
        for s, h in before.items():
            signal.signal(s, h)


@contextmanager
def critical() -> Iterator[None]:
    """A section a signal does not interrupt: it takes effect when the section ends."""
    _state["depth"] += 1
    try:
        yield
    finally:
        _state["depth"] -= 1
        if _state["depth"] == 0 and _state["pending"]:
            signum, _state["pending"] = _state["pending"], 0
            raise Interrupted(signum)


def ignore_interrupts() -> None:
    """For worker processes: Ctrl-C reaches the whole process group, but only the
    coordinator acts on it (it terminates its workers)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
