"""``genre-sweep prepare``: an audio collection -> augmented AST features as Parquet shards (Ray Data)."""

from __future__ import annotations

import logging
import sys

from genre_sweep.cli import job_main
from genre_sweep.data.configs import PrepareConfig
from genre_sweep.data.pipeline import format_summary, run_prepare

log = logging.getLogger(__name__)


def run(cfg: PrepareConfig) -> None:
    manifest = run_prepare(cfg)
    log.info("dataset written to %s\n%s", cfg.out, format_summary(manifest))


main = job_main("prepare")

if __name__ == "__main__":
    sys.exit(main())
