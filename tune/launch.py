"""``genre-sweep launch``: prepare -> sweep -> retrain as one Ray job on a cluster started with ``ray up``.

Runs preflight's cluster and storage checks, submits the job through the dashboard's job API (the
address ``ray dashboard cluster.yaml`` forwards), and prints the job id and the commands to follow the
logs and open the Ray dashboard, TensorBoard and optuna-dashboard.
"""

from __future__ import annotations

import dataclasses
import shlex
import sys
import time

from data.config import check, parse
from data.jobs import run_job
from data.store import StoreError, StoreOptions
from model.dora_ast import HUB_DEFAULT


class LaunchError(RuntimeError):
    """The job can't be submitted; the message says why."""


@dataclasses.dataclass(frozen=True)
class LaunchConfig:
    cluster: str = dataclasses.field(metadata={"help": "the cluster config given to `ray up`"})
    source: str = dataclasses.field(metadata={"help": "audio source: GTZAN-style folder or manifest (s3://)"})
    bucket: str = dataclasses.field(
        metadata={"help": "s3://bucket/prefix: shards go to <bucket>/shards, sweeps to <bucket>/sweeps"}
    )
    name: str = dataclasses.field(default="sweep", metadata={"help": "sweep name"})
    pretrained: str = dataclasses.field(default=HUB_DEFAULT, metadata={"help": "model: hub id or folder on the nodes"})
    trials: int = dataclasses.field(default=35, metadata={"help": "trials"})
    cpus_per_trial: float = dataclasses.field(default=4.0, metadata={"help": "CPUs per trial"})
    gpus_per_trial: float = dataclasses.field(default=0.5, metadata={"help": "GPUs per trial"})
    address: str = dataclasses.field(
        default="http://127.0.0.1:8265",
        metadata={"help": "Ray dashboard (`ray dashboard cluster.yaml` forwards it here)"},
    )
    project_dir: str = dataclasses.field(
        default="/home/ray/genre-sweep", metadata={"help": "where cluster.yaml's file_mounts put this project"}
    )
    python: str = dataclasses.field(
        default="python", metadata={"help": "the nodes' Python with this project installed"}
    )
    study_storage: str | None = dataclasses.field(
        default=None, metadata={"help": "SQLAlchemy URL of the study (default: SQLite on the head)"}
    )
    prepare_args: str = dataclasses.field(default="", metadata={"help": "more `genre-sweep prepare` flags, quoted"})
    sweep_args: str = dataclasses.field(default="", metadata={"help": "more `genre-sweep sweep` flags, quoted"})
    s3_endpoint: str | None = dataclasses.field(default=None, metadata={"help": "endpoint of an S3-compatible store"})
    s3_region: str | None = dataclasses.field(default=None, metadata={"help": "S3 region"})

    def __post_init__(self) -> None:
        check(self.trials >= 1, f"trials must be >= 1, got {self.trials}")
        check(bool(self.name) and "/" not in self.name, f"name must be a plain folder name, got {self.name!r}")

    @property
    def shards(self) -> str:
        return self.bucket.rstrip("/") + "/shards"

    @property
    def storage(self) -> str:
        return self.bucket.rstrip("/") + "/sweeps"

    @property
    def study(self) -> str:
        return self.study_storage or f"sqlite:///{self.project_dir}-studies/{self.name}.db"


def entrypoint(cfg: LaunchConfig) -> str:
    """The job's shell command: prepare unless the shards are already complete, then sweep (with retrain)."""
    gs = f"{shlex.quote(cfg.python)} -m tune.cli"
    s3 = [f"--s3-endpoint {shlex.quote(cfg.s3_endpoint)}"] if cfg.s3_endpoint else []
    s3 += [f"--s3-region {shlex.quote(cfg.s3_region)}"] if cfg.s3_region else []
    q = shlex.quote
    inspect = " ".join([gs, "inspect", "--shards", q(cfg.shards), *s3])
    prepare = " ".join(
        [
            gs,
            "prepare",
            "--source",
            q(cfg.source),
            "--out",
            q(cfg.shards),
            "--ray-address",
            "auto",
            *s3,
            cfg.prepare_args,
        ]
    ).strip()
    sweep = " ".join(
        [
            gs,
            "sweep",
            "--shards",
            q(cfg.shards),
            "--storage",
            q(cfg.storage),
            "--name",
            q(cfg.name),
            "--pretrained",
            q(cfg.pretrained),
            "--trials",
            str(cfg.trials),
            "--cpus-per-trial",
            f"{cfg.cpus_per_trial:g}",
            "--gpus-per-trial",
            f"{cfg.gpus_per_trial:g}",
            "--study-storage",
            q(cfg.study),
            "--ray-address",
            "auto",
            *s3,
            cfg.sweep_args,
        ]
    ).strip()
    mkdir = f"mkdir -p {q(cfg.project_dir + '-studies')}"
    return f"cd {q(cfg.project_dir)} && {mkdir} && ({inspect} > /dev/null 2>&1 || {prepare}) && {sweep}"


def launch(cfg: LaunchConfig) -> str:
    """Check, submit, and return the job id."""
    from ray.job_submission import JobSubmissionClient

    from tune.preflight import check_cluster_config, check_storage_writable, node_types_holding

    try:
        full = check_cluster_config(cfg.cluster)
    except ValueError as e:
        raise LaunchError(f"preflight: {e}") from e
    if not node_types_holding(full, cfg.cpus_per_trial, cfg.gpus_per_trial):
        raise LaunchError(
            f"preflight: no node type in {cfg.cluster} holds a trial of {cfg.cpus_per_trial:g} CPU + "
            f"{cfg.gpus_per_trial:g} GPU"
        )
    check_storage_writable(cfg.bucket, StoreOptions(cfg.s3_endpoint, cfg.s3_region))
    try:
        client = JobSubmissionClient(cfg.address)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise LaunchError(
            f"cannot reach the Ray dashboard at {cfg.address}: {e}. Start the cluster with "
            f"`ray up {cfg.cluster}` and forward the dashboard with `ray dashboard {cfg.cluster}`"
        ) from e
    return client.submit_job(
        entrypoint=entrypoint(cfg), submission_id=f"genre-sweep-{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    )


def instructions(cfg: LaunchConfig, job_id: str) -> str:
    sweep_dir = f"{cfg.storage}/{cfg.name}"
    return "\n".join(
        [
            f"submitted job {job_id}: prepare -> sweep ({cfg.trials} trials) -> retrain -> report",
            f"Ray dashboard:  {cfg.address}   (keep `ray dashboard {cfg.cluster}` running)",
            f"follow logs:    ray job logs --address {cfg.address} --follow {job_id}",
            f"status / stop:  ray job status --address {cfg.address} {job_id}   |   ray job stop ... {job_id}",
            f"TensorBoard:    ray exec {cfg.cluster} 'tensorboard --logdir {sweep_dir}' --port-forward 6006"
            "   then http://localhost:6006",
            f"optuna:         ray exec {cfg.cluster} 'optuna-dashboard {cfg.study}' --port-forward 8080"
            "   then http://localhost:8080",
            f"report:         {sweep_dir}/report/summary.md (kept in the bucket after `ray down`)",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    cfg = parse(LaunchConfig, argv, prog="genre-sweep launch", description=__doc__.split("\n\n")[0])

    def body() -> None:
        print(instructions(cfg, launch(cfg)))

    return run_job(body, known=(LaunchError, StoreError))


if __name__ == "__main__":
    sys.exit(main())
