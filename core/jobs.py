"""What every job's entry point shares: logging set-up, and every expected failure as one line and exit code 2."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from genre_sweep.errors import one_line, user_error

log = logging.getLogger("genre_sweep")


FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format=FORMAT, datefmt="%H:%M:%S")


def worker_logging() -> None:
    """In a Ray task or trial: genre-sweep's own INFO lines (each epoch, each retrain seed) go to stderr, which
    Ray forwards to the driver's output and `ray job logs`; other libraries' loggers keep Ray's settings."""
    ours = logging.getLogger("genre_sweep")
    if not ours.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
        ours.addHandler(handler)
        ours.setLevel(logging.INFO)
        ours.propagate = False
    # Ray Train logs "Checkpoint successfully created at ..." for every report: the epoch line already says it.
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)


def run_job(body: Callable[[], int | None], level: int = logging.INFO) -> int:
    """Run ``body``; its int (or 0) is the exit code. A ``GenreSweepError`` from any package, raised here
    or inside a Ray task, ends it with one ``error: ...`` line and exit code 2."""
    configure_logging(level)
    try:
        code = body()
    except Exception as e:
        known = user_error(e)
        if known is None:
            raise
        print(f"error: {one_line(known)}", file=sys.stderr)
        return 2
    return int(code or 0)
