"""``genre-sweep``: one console command, a subcommand per job; each job is also ``python -m <module>``."""

from __future__ import annotations

import importlib
import sys

# subcommand -> (module whose main(argv) runs it, one line of help). Later jobs join this table.
JOBS: dict[str, tuple[str, str]] = {
    "synth": ("data.synth", "generate a synthetic GTZAN-format corpus"),
    "prepare": ("data.prepare", "audio -> augmented AST features as Parquet shards (Ray Data)"),
    "inspect": ("data.inspect", "check a prepared dataset is complete and say what it holds"),
    "train": ("model.train", "train one DoRA-AST configuration and export its best epoch"),
    "evaluate": ("model.evaluate", "accuracy, per-genre P/R/F1 and confusion matrix of an exported model"),
    "predict": ("model.predict", "song-level genres of audio files with an exported model"),
    "sweep": ("tune.sweep", "Ray Tune + Optuna TPE + ASHA search, then best-config retrain and report"),
    "retrain": ("tune.retrain", "retrain, test and report a finished sweep's best configuration"),
    "preflight": ("tune.preflight", "check cluster config, trial resources, storage and shards before a run"),
    "launch": ("tune.launch", "submit prepare -> sweep -> retrain as one Ray job to a `ray up` cluster"),
}


def usage() -> str:
    width = max(map(len, JOBS))
    lines = ["usage: genre-sweep <job> [--help] [options]", "", "jobs:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in JOBS.items()]
    lines += ["", "Each job takes --config FILE (YAML) and --<field> flags; `genre-sweep <job> --help` lists them."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    job, rest = argv[0], argv[1:]
    if job not in JOBS:
        print(f"genre-sweep: unknown job {job!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(JOBS[job][0])
    return module.main(rest)


if __name__ == "__main__":
    sys.exit(main())
