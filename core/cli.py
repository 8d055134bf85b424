"""``genre-sweep``: one console command, a subcommand per job; each job is also ``python -m genre_sweep.<pkg>.<job>``.

Parsing a job's flags imports only its config module (no torch, Ray or transformers), so ``--help``,
``--print-config`` and a bad flag answer at once; the job's module is imported only to run it.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from genre_sweep import __version__
from genre_sweep.config import parse_args, to_yaml
from genre_sweep.jobs import run_job


@dataclasses.dataclass(frozen=True)
class Job:
    config: str  # "module:Class" of the job's frozen config: a light module, read by --help
    run: str  # "module:function" taking the config; imported only when the job runs
    help: str  # one line for `genre-sweep --help`
    log_level: int = logging.INFO
    positional: str | None = None  # a field that may also come as the first argument, e.g. `predict SONG`


# subcommand -> its job, in the order a user meets them.
JOBS: dict[str, Job] = {
    "synth": Job("genre_sweep.data.configs:SynthConfig", "genre_sweep.data.synth:run", "generate a synthetic corpus"),
    "prepare": Job(
        "genre_sweep.data.configs:PrepareConfig",
        "genre_sweep.data.prepare:run",
        "audio -> augmented AST features as Parquet shards (Ray Data)",
    ),
    "inspect": Job(
        "genre_sweep.data.configs:InspectConfig",
        "genre_sweep.data.inspect:run",
        "check a prepared dataset is complete and say what it holds",
    ),
    "train": Job(
        "genre_sweep.model.configs:TrainConfig",
        "genre_sweep.model.train:run",
        "train one DoRA-AST configuration and export its best epoch",
    ),
    "pretrain": Job(
        "genre_sweep.model.configs:PretrainConfig",
        "genre_sweep.model.pretrain:run",
        "pretrain the embedded default's small AST on synthetic sound attributes (not genre)",
    ),
    "evaluate": Job(
        "genre_sweep.model.configs:EvaluateConfig",
        "genre_sweep.model.evaluate:run",
        "accuracy, per-genre P/R/F1 and confusion matrix of an exported model",
    ),
    "predict": Job(
        "genre_sweep.model.configs:PredictConfig",
        "genre_sweep.model.predict:run",
        "song-level genres of audio files with an exported model",
        positional="inputs",
    ),
    "sweep": Job(
        "genre_sweep.tune.configs:SweepConfig",
        "genre_sweep.tune.sweep:run",
        "Ray Tune + Optuna TPE + ASHA search, then best-config retrain and report",
    ),
    "retrain": Job(
        "genre_sweep.tune.configs:RetrainConfig",
        "genre_sweep.tune.retrain:run",
        "retrain, test and report a finished sweep's best configuration",
    ),
    "preflight": Job(
        "genre_sweep.tune.configs:PreflightConfig",
        "genre_sweep.tune.preflight:run",
        "check cluster config, trial resources, storage and shards before a run",
        log_level=logging.WARNING,
    ),
    "launch": Job(
        "genre_sweep.tune.configs:LaunchConfig",
        "genre_sweep.tune.launch:run",
        "submit prepare -> sweep -> retrain as one Ray job to a `ray up` cluster",
    ),
    "spot-watch": Job(
        "genre_sweep.spot:SpotWatchConfig",
        "genre_sweep.spot:run",
        "on a worker: drain this Ray node when AWS sends its spot interruption notice",
    ),
}


def _load(ref: str) -> Any:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def usage() -> str:
    width = max(map(len, JOBS))
    lines = ["usage: genre-sweep [--version] <job> [--help] [options]", "", "jobs:"]
    lines += [f"  {name:<{width}}  {job.help}" for name, job in JOBS.items()]
    lines += [
        "",
        "Each job takes --config FILE (YAML), --print-config, and a --flag per setting (--learning-rate or",
        "--learning_rate); `genre-sweep <job> --help` lists them.",
    ]
    return "\n".join(lines)


def run_command(name: str, argv: list[str] | None = None) -> int:
    """Parse ``argv`` for job ``name``, then run it: exit code 0, or 2 with one error line."""
    job = JOBS[name]
    argv = list(argv or [])
    if job.positional and argv and not argv[0].startswith("-"):
        argv = [f"--{job.positional}", argv[0], *argv[1:]]
    cls = _load(job.config)
    cfg, print_only = parse_args(cls, argv, prog=f"genre-sweep {name}", description=inspect.cleandoc(cls.__doc__))
    if print_only:
        sys.stdout.write(to_yaml(cfg))
        return 0
    # Ray folds log lines that differ only in numbers ("[repeated 9x across cluster]"): every trial's epoch line
    # would vanish into one. Ours are never folded; Ray's own still are. Read when Ray is imported, i.e. below.
    os.environ.setdefault("RAY_DEDUP_LOGS_ALLOW_REGEX", r"genre_sweep\.")
    return run_job(lambda: _load(job.run)(cfg), job.log_level)


def job_main(name: str) -> Callable[[list[str] | None], int]:
    """The ``main(argv)`` of job ``name``'s module: ``python -m`` and tests call it."""

    def main(argv: list[str] | None = None) -> int:
        return run_command(name, sys.argv[1:] if argv is None else argv)

    main.__doc__ = f"`genre-sweep {name}`: {JOBS[name].help}."
    return main


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:  # no job: the usage, as an error (a script that forgot its job should not pass)
        print(usage(), file=sys.stderr)
        return 2
    if argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] in ("-V", "--version"):
        print(f"genre-sweep {__version__}")
        return 0
    job, rest = argv[0], argv[1:]
    if job not in JOBS:
        close = difflib.get_close_matches(job.lstrip("-"), list(JOBS), n=3)
        guess = f"did you mean {' or '.join(close)}? " if close else ""
        print(
            f"genre-sweep: error: unknown job {job!r}; {guess}jobs: {', '.join(JOBS)} (see genre-sweep --help)",
            file=sys.stderr,
        )
        return 2
    return run_command(job, rest)


if __name__ == "__main__":
    sys.exit(main())
