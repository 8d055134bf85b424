"""``genre-sweep launch``: prepare -> sweep -> retrain as one Ray job on a cluster started with ``ray up``.

Runs preflight's cluster and storage checks, submits the job through the dashboard's job API (the
address ``ray dashboard cluster.yaml`` forwards), and prints the job id and the commands to follow the
logs and open the Ray dashboard, TensorBoard and optuna-dashboard.
"""

from __future__ import annotations

import shlex
import sys
import time

from ray.job_submission import JobSubmissionClient

from genre_sweep.cli import job_main
from genre_sweep.errors import GenreSweepError
from genre_sweep.tune.configs import LaunchConfig
from genre_sweep.tune.preflight import check_cluster_config, check_storage_writable, node_types_holding


class LaunchError(GenreSweepError, RuntimeError):
    """The job can't be submitted; the message says why."""


def entrypoint(cfg: LaunchConfig) -> str:
    """The job's shell command: prepare unless the shards are already complete, then sweep (with retrain)."""
    gs = f"{shlex.quote(cfg.python)} -m genre_sweep"
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
            "--task-resource",
            "cpu_node",  # cluster.yaml's CPU nodes: prepare never starts a GPU worker
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
    try:
        full = check_cluster_config(cfg.cluster)
    except ValueError as e:
        raise LaunchError(f"preflight: {e}") from e
    if not node_types_holding(full, cfg.cpus_per_trial, cfg.gpus_per_trial):
        raise LaunchError(
            f"preflight: no node type in {cfg.cluster} holds a trial of {cfg.cpus_per_trial:g} CPU + "
            f"{cfg.gpus_per_trial:g} GPU"
        )
    check_storage_writable(cfg.bucket, cfg.options)
    try:
        client = JobSubmissionClient(cfg.ray_address)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise LaunchError(
            f"cannot reach the Ray dashboard at {cfg.ray_address}: {e}. Start the cluster with "
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
            f"Ray dashboard:  {cfg.ray_address}   (keep `ray dashboard {cfg.cluster}` running; the token it asks "
            f"for: `ray exec {cfg.cluster} 'ray get-auth-token'`)",
            f"follow logs:    ray job logs --address {cfg.ray_address} --follow {job_id}",
            f"status / stop:  ray job status --address {cfg.ray_address} {job_id}   |   ray job stop ... {job_id}",
            f"TensorBoard:    ray exec {cfg.cluster} 'tensorboard --logdir {sweep_dir}' --port-forward 6006"
            "   then http://localhost:6006",
            f"optuna:         ray exec {cfg.cluster} 'optuna-dashboard {cfg.study}' --port-forward 8080"
            "   then http://localhost:8080",
            f"report:         {sweep_dir}/report/summary.md (kept in the bucket after `ray down`)",
        ]
    )


def run(cfg: LaunchConfig) -> None:
    print(instructions(cfg, launch(cfg)))


main = job_main("launch")

if __name__ == "__main__":
    sys.exit(main())
