"""What every job's entry point shares: logging set-up, every expected failure as one line and exit code 2, and
an interrupt (Ctrl-C, SIGTERM) as one line and exit code 130 or 143."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from genre_sweep.errors import one_line, user_error
from genre_sweep.interrupt import Interrupted, interruptible

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
    or inside a Ray task, ends it with one ``error: ...`` line and exit code 2; Ctrl-C or SIGTERM with one
    ``interrupted ...`` line (saying how to finish, where the job knows) and exit code 128 + the signal."""
    configure_logging(level)
    try:
        with interruptible():
            code = body()
    except Interrupted as e:
        print(e.line(), file=sys.stderr)
        return e.exit_code
    except Exception as e:
        known = user_error(e)
        if known is None:
            raise
        print(f"error: {one_line(known)}", file=sys.stderr)
        return 2
    return int(code or 0)
