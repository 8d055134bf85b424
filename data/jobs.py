"""What every job's entry point shares: logging set-up and turning known failures into a clear exit."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from data.config import ConfigError
from data.store import StoreError

log = logging.getLogger("genre_sweep")


def configure_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def run_job(body: Callable[[], None], known: tuple[type[BaseException], ...] = ()) -> int:
    """Run ``body``; a config, store or ``known`` error ends it with one clear line and exit code 2."""
    configure_logging()
    try:
        body()
    except (ConfigError, StoreError, *known) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
