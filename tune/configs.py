"""The tune jobs' configs (retrain, sweep, preflight, launch) and the sweep's error: light, read by ``--help``.

``SweepConfig`` extends ``RetrainConfig``: a retrain takes exactly the settings that pick, train and test
the best configuration of a finished sweep, and a sweep adds the search's own.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
from pathlib import Path

from genre_sweep.config import ConfigError, check, field
from genre_sweep.errors import GenreSweepError
from genre_sweep.model.configs import HUB_DEFAULT, METRICS, MODE_HELP, PRETRAINED_HELP, metric_mode
from genre_sweep.store import StoreFlags, absolute, is_s3
from genre_sweep.tune.ledger import check_budgets

# a sweep's name is one folder under --storage: never `.`, `..` or a path
PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
# --sampler and --scheduler (tune/samplers.py, tune/schedulers.py)
SAMPLERS = ("tpe", "gp", "cmaes", "qmc", "random")
SCHEDULERS = ("asha", "hyperband", "median", "none")


REPORT_TO = ("tensorboard", "mlflow", "wandb")
EXTRAS = {"mlflow": "mlflow", "wandb": "wandb"}  # a destination that needs an extra -> the module the extra installs
NONE = "none"  # --report-to none: no tracking at all


def parse_report_to(value: str) -> tuple[str, ...]:
    """The destinations ``--report-to`` names (comma-separated, ``none`` for none), each checked to be known and,
    for MLflow and W&B, installed: ConfigError (one line, exit 2) naming the extra to install otherwise."""
    names = tuple(dict.fromkeys(n.strip().lower() for n in value.split(",") if n.strip()))
    if names == (NONE,):
        return ()
    unknown = [n for n in names if n not in REPORT_TO]
    if unknown or not names:
        raise ConfigError(
            f"report_to must be a comma-separated list of {', '.join(REPORT_TO)} (or {NONE}), got {value!r}"
        )
    for name in names:
        module = EXTRAS.get(name)
        if module is not None and importlib.util.find_spec(module) is None:
            raise ConfigError(
                f"--report-to {name} needs {module}, which is not installed: pip install 'genre-sweep[{name}]'"
            )
    return names


class SweepError(GenreSweepError, RuntimeError):
    """The sweep can't run as asked; the message says why and what to change."""


@dataclasses.dataclass(frozen=True)
class RetrainConfig(StoreFlags):
    """Confirm a finished sweep's winner: its top configurations (--confirm-top) are retrained with several seeds
    each (best epoch on validation), the one with the best mean validation metric is chosen and tested once, its
    best seed exported, and the report written into <storage>/<name>/report. Everything a trial computes (the
    dataset, the trial template, the space, the objective) comes from the sweep record; flags marked "the sweep
    record's" may be left out, and one that contradicts the record is refused."""

    storage: str = field(help="folder or s3://bucket/prefix for trials, study and report")
    name: str = field("sweep", "experiment name: results go to <storage>/<name>")
    shards: str | None = field(
        None,
        "prepared dataset (folder or s3://); required by a new sweep; a resumed sweep and retrain take the record's "
        "(another location of the same data, by fingerprint, is accepted)",
    )
    pretrained: str | None = field("small", PRETRAINED_HELP, recorded=True)
    space: str | None = field(
        None,
        "YAML file changing the search space (sections space: and fixed:); unset: the default space; a resumed sweep "
        "and retrain take the record's (a file given must hold the same space)",
    )
    metric: str | None = field(
        "val_clip_acc",
        "the objective: the validation metric that picks each trial's best epoch, ASHA's stops, the search's "
        f"direction, the winner and the export; one of {', '.join(METRICS)}",
        recorded=True,
        choices=list(METRICS),
    )
    mode: str | None = field(None, MODE_HELP, recorded=True, choices=["max", "min"])
    seed: int | None = field(0, "seed of the sampler, of the trials and of the first retrain", recorded=True)
    study_storage: str | None = field(None, "SQLAlchemy URL of the Optuna study; unset: SQLite beside the results")
    cpus_per_trial: float = field(1.0, "CPUs reserved per trial (and by each retrain)")
    gpus_per_trial: float = field(0.0, "GPUs per trial (and per retrain); fractions pack several on one GPU")
    prefix_cache: bool = field(
        True, "compute the frozen layers' output once (below the space's lowest adapter) and start every trial there"
    )
    retrain_seeds: int = field(3, "seeds each confirmed configuration is retrained with")
    confirm_top: int = field(
        3,
        "how many of the search's best configurations are retrained with --retrain-seeds seeds each before the "
        "winner is chosen by its mean validation metric (1: the search's best alone)",
    )
    device: str | None = field(
        "auto",
        "where trials, the cache and the retrain run: auto takes CUDA where Ray gives a GPU (and fails at once if "
        "CUDA is unusable there); cpu runs on CPUs on purpose (CPU clusters, tests)",
        recorded=True,
        choices=["auto", "cpu", "cuda"],
    )
    ray_address: str | None = field(None, "Ray cluster address; local Ray when unset")
    node_store: str | None = field(
        None,
        "node-local folder where each node materialises the dataset once and trials map it (fast local disk, e.g. "
        "instance NVMe); unset: $GENRE_SWEEP_NODE_STORE, else genre-sweep-store in the system's temp folder",
    )
    node_disk_gb: float | None = field(
        None,
        "the most each node's store may hold (GB): when the dataset and the prefix cache would not fit, the cache is "
        "off (one log line says so); unset: the node's free disk is the only bound",
    )
    # where each trial's per-epoch metrics go, and the report and model at the end (tune/tracking.py)
    report_to: str = field(
        "tensorboard",
        "where every trial's per-epoch metrics go, comma-separated: tensorboard, mlflow, wandb (or none); mlflow and "
        "wandb also get the report and the exported model at the end, and need the extras genre-sweep[mlflow] and "
        "genre-sweep[wandb]",
    )
    mlflow_uri: str | None = field(
        None,
        "MLflow tracking URI (a server, or sqlite:///path/mlflow.db); unset: $MLFLOW_TRACKING_URI, else MLflow's "
        "default",
    )
    wandb_project: str | None = field(
        None, "W&B project (runs grouped by the sweep's name); unset: $WANDB_PROJECT, else genre-sweep"
    )
    # the cost ledger's price (tune/ledger.py): trials.csv and summary.md turn GPU-hours into money with it
    gpu_hour_price: float | None = field(
        None, "money per GPU-hour: trials.csv and the summary's cost table give each trial's and each stage's cost"
    )

    def __post_init__(self) -> None:
        # trials and the retrain run in other working directories: relative local paths would not resolve there
        if self.shards:
            object.__setattr__(self, "shards", absolute(self.shards))
        if self.node_store:
            object.__setattr__(self, "node_store", absolute(self.node_store))
        check(self.cpus_per_trial > 0, f"cpus_per_trial must be > 0, got {self.cpus_per_trial}")
        check(self.gpus_per_trial >= 0, f"gpus_per_trial must be >= 0, got {self.gpus_per_trial}")
        check(self.retrain_seeds >= 1, f"retrain_seeds must be >= 1, got {self.retrain_seeds}")
        check(self.confirm_top >= 1, f"confirm_top must be >= 1, got {self.confirm_top}")
        parse_report_to(self.report_to)  # a destination not installed: one line naming its extra, before Ray starts
        # argparse checks a flag's choices; a --config file's values are checked here
        check(self.metric in (None, *METRICS), f"metric must be one of {', '.join(METRICS)}, got {self.metric!r}")
        check(self.mode in (None, "max", "min"), f"mode must be max or min, got {self.mode!r}")
        check(self.node_disk_gb is None or self.node_disk_gb > 0, f"node_disk_gb must be > 0, got {self.node_disk_gb}")
        check(
            self.gpu_hour_price is None or self.gpu_hour_price >= 0,
            f"gpu_hour_price must be >= 0, got {self.gpu_hour_price}",
        )
        check(
            PLAIN_NAME.fullmatch(self.name) is not None,
            f"name must be a plain folder name (letters, digits, '.', '_', '-'; not starting with '.'), "
            f"got {self.name!r}",
        )

    @property
    def root(self) -> str:
        return self.storage.rstrip("/") + "/" + self.name

    @property
    def direction(self) -> str:
        """max or min: the mode the objective is judged by (set once the config is resolved)."""
        assert self.metric is not None, "the config is not resolved against a sweep record yet"
        return metric_mode(self.metric, self.mode)

    def study_url(self) -> str:
        if self.study_storage:
            return self.study_storage
        local = Path(self.storage) if not is_s3(self.storage) else Path("genre-sweep-studies")
        local = local.resolve() / self.name if not is_s3(self.storage) else local.resolve()
        local.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{local / ('optuna.db' if not is_s3(self.storage) else self.name + '.db')}"


@dataclasses.dataclass(frozen=True)
class SweepConfig(RetrainConfig):
    """Search the DoRA-AST hyperparameters with Ray Tune, an Optuna sampler (TPE) and a scheduler (ASHA) by epoch,
    then confirm the best configurations over seeds, test the chosen one and write the report. The sweep's folder
    holds its record (the dataset's fingerprint, the space, the objective and the complete training config every
    trial starts from); --resume finishes an interrupted sweep from that record."""

    # trials, max_concurrent_trials and max_failures are recorded because Tune restores them on --resume: a resume
    # finishes the sweep as it was started, and a different value, which would be silently ignored, is refused
    trials: int | None = field(35, "number of trials", recorded=True)
    max_concurrent_trials: int | None = field(
        None, "trials at once; unset: what the cluster holds once scaled up (see --cluster)", recorded=True
    )
    cluster: str | None = field(
        None,
        "the cluster config `ray up` started (node types and their max_workers): the sweep plans from what the "
        "cluster can scale to and asks the autoscaler for it up front; unset: a `ray up` head's own bootstrap "
        "config, else the nodes up now",
    )
    sampler: str | None = field(
        "tpe",
        "Optuna's sampler, seeded by --seed: tpe (multivariate TPE; with trials at once, the constant liar), gp "
        "(Gaussian process), cmaes (CMA-ES; categorical parameters at random), qmc (scrambled Sobol) or random",
        recorded=True,
        choices=list(SAMPLERS),
    )
    scheduler: str | None = field(
        "asha",
        "what stops trials early, by epoch: asha, hyperband (asynchronous, up to 3 brackets), median (the median "
        "stopping rule) or none (every trial trains all its epochs); a stopped trial is PRUNED in the study",
        recorded=True,
        choices=list(SCHEDULERS),
    )
    grace_period: int | None = field(1, "asha, hyperband, median: epochs before a trial can be stopped", recorded=True)
    reduction_factor: float | None = field(
        3.0, "asha, hyperband: keep the top 1/reduction_factor at each rung", recorded=True
    )
    max_t: int | None = field(
        None, "asha, hyperband: most epochs; unset: the largest epoch count in the space", recorded=True
    )
    max_failures: int | None = field(
        2, "retries of a crashed trial (a trial whose settings cannot train is not retried)", recorded=True
    )
    # what a new sweep's study starts with (tune/warm.py, docs/sweep.md#starting-from-what-is-known)
    warm_start: str | None = field(
        None,
        "a previous study whose finished trials (complete, and pruned with their epochs) that fit this space are added "
        "to this one's before the search, so the sampler starts informed: a sweep folder (local or s3://) or an Optuna "
        "storage URL with the study's name after #, e.g. sqlite:///old.db#mysweep",
        recorded=True,
    )
    enqueue: str | None = field(
        None,
        "YAML list of configurations (mappings of searched hyperparameter: value) tried first, after the recipe "
        "trial; a hyperparameter an entry leaves out is drawn by the sampler",
        recorded=True,
    )
    recipe_trial: bool | None = field(
        True,
        "the first trial runs the recipe (the train job's defaults of the searched hyperparameters; where one is "
        "outside the space, its nearest value there), and the confirmation retrains it beside the search's best",
        recorded=True,
    )
    # budgets and stop rules (tune/budget.py): not recorded, so --resume with a larger budget goes on
    time_budget: str | None = field(
        None,
        "end the search after this much wall time from the sweep's start, counted across resumes: seconds, or 90s, "
        "45m, 2h; no new trial starts, running ones finish their epoch (pruned), the confirmation runs on what was "
        "found",
    )
    gpu_hours: float | None = field(
        None, "end the search (as --time-budget) once its trials used this many GPU-hours (GPU fraction x running time)"
    )
    stop_at: float | None = field(
        None, "end the search (as --time-budget) once an epoch's objective reaches this value (in --mode's direction)"
    )
    patience: int | None = field(
        None,
        "end the search (as --time-budget) once the best has not improved by --min-delta in this many finished trials",
    )
    min_delta: float = field(0.0, "--patience: the best must improve by more than this to count")
    resume: bool = field(False, "finish an interrupted sweep of the same name, from its record")
    retrain: bool = field(True, "confirm the best configurations, test the chosen one and write the report at the end")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.trials is None or self.trials >= 1, f"trials must be >= 1, got {self.trials}")
        check(
            self.grace_period is None or self.grace_period >= 1, f"grace_period must be >= 1, got {self.grace_period}"
        )
        check(
            self.reduction_factor is None or self.reduction_factor > 1,
            f"reduction_factor must be > 1, got {self.reduction_factor}",
        )
        check(self.max_t is None or self.max_t >= 1, f"max_t must be >= 1, got {self.max_t}")
        # argparse checks a flag's choices; a --config file's values are checked here
        check(self.sampler in (None, *SAMPLERS), f"sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        check(
            self.scheduler in (None, *SCHEDULERS),
            f"scheduler must be one of {', '.join(SCHEDULERS)}, got {self.scheduler!r}",
        )
        check(
            self.max_concurrent_trials is None or self.max_concurrent_trials >= 1, "max_concurrent_trials must be >= 1"
        )
        check(self.resume or bool(self.shards), "missing required --shards (a new sweep needs its dataset)")
        check_budgets(self)
        # read from other working directories (a resume, retrain): local paths made absolute, a study's URL as given
        if self.warm_start and (is_s3(self.warm_start) or "://" not in self.warm_start.removeprefix("file://")):
            object.__setattr__(self, "warm_start", absolute(self.warm_start))
        if self.enqueue:
            object.__setattr__(self, "enqueue", absolute(self.enqueue))


@dataclasses.dataclass(frozen=True)
class PreflightConfig(StoreFlags):
    """The checks to pass before paying for a cluster run, each with its verdict: the cluster config against
    Ray's schema (offline), a node type able to hold one trial, the storage writable, the shards fitting the model."""

    shards: str = field(help="prepared dataset the sweep will read (folder or s3://)")
    storage: str = field(help="where the sweep will write (folder or s3://bucket/prefix)")
    cluster: str | None = field(None, "cluster config for `ray up`")
    pretrained: str = field("small", "the model the sweep will train: " + PRETRAINED_HELP)
    space: str | None = field(None, "the sweep's search space YAML (its lowest adapted layer sizes the prefix cache)")
    cpus_per_trial: float = field(1.0, "CPUs per trial")
    gpus_per_trial: float = field(0.0, "GPUs per trial")
    ray_address: str | None = field(None, "check this running cluster's nodes")

    def __post_init__(self) -> None:
        check(self.cpus_per_trial > 0 and self.gpus_per_trial >= 0, "trial resources must be positive")


@dataclasses.dataclass(frozen=True)
class LaunchConfig(StoreFlags):
    """Submit prepare -> sweep -> retrain as one Ray job to a cluster started with `ray up`, after preflight's
    cluster and storage checks; prints the job id and how to follow it (logs, dashboard, TensorBoard, optuna)."""

    cluster: str = field(help="the cluster config given to `ray up`")
    source: str = field(help="audio source: GTZAN-style folder or manifest (s3://)")
    bucket: str = field(help="s3://bucket/prefix: shards go to <bucket>/shards, sweeps to <bucket>/sweeps")
    name: str = field("sweep", "sweep name")
    pretrained: str = field(HUB_DEFAULT, "model: hub id or folder on the nodes")
    trials: int = field(35, "trials")
    cpus_per_trial: float = field(4.0, "CPUs per trial")
    gpus_per_trial: float = field(0.5, "GPUs per trial")
    ray_address: str = field(
        "http://127.0.0.1:8265",
        "the Ray dashboard's address, where the job is submitted (`ray dashboard cluster.yaml` forwards it here)",
    )
    project_dir: str = field("/home/ray/genre-sweep", "where cluster.yaml's file_mounts put this project")
    python: str = field("python", "the nodes' Python with this project installed")
    study_storage: str | None = field(None, "SQLAlchemy URL of the study; unset: SQLite on the head")
    prepare_args: str = field("", "more `genre-sweep prepare` flags, quoted")
    sweep_args: str = field("", "more `genre-sweep sweep` flags, quoted")

    def __post_init__(self) -> None:
        check(self.trials is None or self.trials >= 1, f"trials must be >= 1, got {self.trials}")
        check(
            PLAIN_NAME.fullmatch(self.name) is not None,
            f"name must be a plain folder name (letters, digits, '.', '_', '-'; not starting with '.'), "
            f"got {self.name!r}",
        )

    @property
    def shards(self) -> str:
        return self.bucket.rstrip("/") + "/shards"

    @property
    def storage(self) -> str:
        return self.bucket.rstrip("/") + "/sweeps"

    @property
    def study(self) -> str:
        return self.study_storage or f"sqlite:///{self.project_dir}-studies/{self.name}.db"
