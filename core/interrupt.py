"""Ctrl-C (SIGINT) and SIGTERM: a job stops with one line and exit code 128 + the signal (130, 143), no traceback.

Outside a graceful section either signal raises ``Interrupted`` at once (``install``; ``ray.init`` replaces
Python's SIGTERM handling, so ``init_ray`` installs it again). Inside one (``graceful``: the sweep's Tune loop),
the first signal asks the section to stop at its next safe point and is remembered; a second raises at once.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """The user (Ctrl-C) or the system (SIGTERM) stopped the job; ``hint`` says how to finish its work.

    A ``BaseException``, as ``KeyboardInterrupt`` is: no ``except Exception`` on the way swallows it."""

    def __init__(self, signum: int, hint: str = "") -> None:
        super().__init__(signum, hint)
        self.signum = signum
        self.hint = hint

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def line(self) -> str:
        name = signal.Signals(self.signum).name
        return f"interrupted ({name}): {self.hint}" if self.hint else f"interrupted ({name})"


def _raise(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()  # only the main thread may set handlers


def install() -> None:
    """SIGINT and SIGTERM raise ``Interrupted`` in the main thread (a no-op elsewhere)."""
    if _main_thread():
        for s in SIGNALS:
            signal.signal(s, _raise)


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """``install`` for the time inside; the handlers before are put back on the way out."""
    previous = {s: signal.getsignal(s) for s in SIGNALS} if _main_thread() else {}
    install()
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def graceful(stop: Callable[[], bool], what: str) -> Iterator[list[int]]:
    """While inside, the first SIGINT or SIGTERM calls ``stop()`` (which must return at once) and is appended to
    the yielded list; a second raises ``Interrupted``, as does the first when ``stop()`` says there is nothing to
    stop gracefully yet (False). The handlers before are put back on the way out."""
    received: list[int] = []

    def first(signum: int, frame: FrameType | None) -> None:
        if received:
            raise Interrupted(signum)
        received.append(signum)
        if not stop():
            raise Interrupted(signum)
        log.warning(
            "%s received: stopping %s (its state is kept to resume); press Ctrl-C again to stop at once",
            signal.Signals(signum).name,
            what,
        )

    if not _main_thread():
        yield received
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    for s in SIGNALS:
        signal.signal(s, first)
    try:
        yield received
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
