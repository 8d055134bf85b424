"""``genre-sweep sweep``: Ray Tune + an Optuna sampler + a scheduler over the DoRA-AST space, then retrain, report.

The inputs are checked before Ray starts (``preflight.before_sweep``). The driver reads only the dataset's
manifest: each node maps the data, and the frozen-prefix cache its first trial builds, from its own
store (``model.node_store``; no Ray Data inside trials). Each trial is one
``train()`` run reporting once per epoch with a checkpoint; the Optuna study lives in an RDB storage
(``tune.study``: SQLite beside the results by default, backed up to S3 storage) so optuna-dashboard can
watch it; ``--resume`` finishes an interrupted sweep with its trials and scheduler state.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shlex
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray
from ray import tune

from genre_sweep.cli import job_main
from genre_sweep.errors import one_line
from genre_sweep.interrupt import Interrupted, graceful
from genre_sweep.model.device import describe, released_task, resolve_device
from genre_sweep.model.node_store import NodeData
from genre_sweep.ray_start import init_ray
from genre_sweep.store import absolute, filesystem, storage_full
from genre_sweep.tune import internals, lease, preemption
from genre_sweep.tune.budget import BudgetStopper, BudgetWatch, refuse_if_spent
from genre_sweep.tune.budget import session as budget_session
from genre_sweep.tune.capacity import Capacity, cluster_capacity
from genre_sweep.tune.configs import SweepConfig, SweepError
from genre_sweep.tune.preflight import before_sweep
from genre_sweep.tune.progress import STORAGE_FULL, SweepProgress
from genre_sweep.tune.record import SweepRecord, write_record
from genre_sweep.tune.retrain import failed_trials_exit, retrain_and_report, trial_source
from genre_sweep.tune.samplers import make_sampler
from genre_sweep.tune.schedulers import label, make_scheduler, restore_state
from genre_sweep.tune.search import PruneAwareOptunaSearch
from genre_sweep.tune.study import close_interrupted, open_storage, study_backup
from genre_sweep.tune.tracking import use_loggers
from genre_sweep.tune.trial import TRIAL_ACTOR, run_trial, trial_actor
from genre_sweep.tune.warm import known, seed_study

log = logging.getLogger(__name__)


def plan(cfg: SweepConfig) -> tuple[Capacity, int]:
    """What the cluster can scale to, and the trials to run at once there (``--max-concurrent-trials`` or all
    the scaled cluster holds). Fails at once when no node type can ever hold one trial."""
    capacity = cluster_capacity(cfg.cluster, ray.nodes())
    cpus, gpus = cfg.cpus_per_trial, cfg.gpus_per_trial
    if not capacity.holding(cpus, gpus):
        raise SweepError(
            f"no node can hold a trial of {cpus:g} CPU + {gpus:g} GPU (node types of {capacity.source}: "
            f"{capacity.describe()}); lower --cpus-per-trial/--gpus-per-trial or add such nodes"
        )
    at_once = cfg.max_concurrent_trials or max(1, capacity.concurrency(cpus, gpus))
    log.info("%d trials at once on %s (%s)", at_once, capacity.source, capacity.describe())
    return capacity, at_once


@contextlib.contextmanager
def capacity_requested(capacity: Capacity, trials: int, cpus: float, gpus: float) -> Iterator[None]:
    """Ask the autoscaler for ``trials`` trials' resources at once, so workers start together, not one by one
    as trials queue; the request is released when the sweep ends, so idle workers can scale down."""
    if not capacity.autoscaling:
        yield
        return
    from ray.autoscaler.sdk import request_resources

    bundle = {"CPU": cpus, **({"GPU": gpus} if gpus else {})}
    request_resources(bundles=[bundle] * trials)
    try:
        yield
    finally:
        request_resources(bundles=[])


def trial_name(trial: Any) -> str:
    """A trial's one name (Tune's trial id: with a search algorithm, 8 hex digits such as ``72e1db1e``): in the
    progress lines, its folder (so the TensorBoard run), trials.csv, the report and the study's user attributes."""
    return trial.trial_id


def build_tuner(cfg: SweepConfig, record: SweepRecord, source: NodeData, at_once: int) -> tune.Tuner:
    """The Tuner (new, or restored with ``--resume``) with its scheduler; ``cfg`` is resolved against
    ``record`` (``before_sweep``), whose template every trial starts from."""
    space = record.search_space
    fs, storage_path = filesystem(cfg.storage, cfg.options)  # with a filesystem given, Tune wants bucket/key paths
    experiment_path = storage_path + "/" + cfg.name
    trainable = trial_actor(
        run_trial,
        {"cpu": cfg.cpus_per_trial, "gpu": cfg.gpus_per_trial},
        data=source,
        template=record.train_config(cfg),
    )
    # --scheduler, its state beside the experiment folder (tune/schedulers.py); metric and mode come from TuneConfig
    scheduler = make_scheduler(cfg)
    if cfg.resume:  # before_sweep checked that it is there, and ours, and that cfg agrees with its record
        restore_state(scheduler)
        internals.reopen_stopped_search()  # a search a stop rule ended goes on, with the budget this run gives
        tuner = tune.Tuner.restore(experiment_path, trainable=trainable, resume_errored=True, storage_filesystem=fs)
        internals.set_restored_scheduler(tuner, scheduler)  # Tune does not save the scheduler itself
        return tuner
    url = cfg.study_url()
    write_record(cfg, record)
    searcher = PruneAwareOptunaSearch(
        space=space.distributions(),
        metric=cfg.metric,
        mode=cfg.direction,
        sampler=make_sampler(cfg.sampler, cfg.seed, at_once > 1, space.distributions()),  # --sampler, seeded
        storage=open_storage(url),
        backup=study_backup(cfg, url),  # with S3 storage, the SQLite study is copied there after each trial
        study_name=cfg.name,
        default_epochs=space.max_epochs(),  # a trial's epochs when the space does not search them
        trials_root=cfg.root,
    )
    # --warm-start's trials, then the recipe and --enqueue's configurations queued for the first trials (tune/warm.py)
    seed_study(cfg, record, internals.optuna_study(searcher))
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,
            metric=cfg.metric,
            mode=cfg.direction,
            num_samples=cfg.trials,
            max_concurrent_trials=at_once,
            # a trial's actor runs the next trial: no new process, no imports, the checkpoint already in memory
            reuse_actors=True,
            trial_name_creator=trial_name,
            trial_dirname_creator=trial_name,
        ),
        run_config=tune.RunConfig(
            name=cfg.name,
            storage_path=storage_path,
            storage_filesystem=fs,
            failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
            # each trial keeps its two newest checkpoints, oldest deleted first. Every checkpoint holds the best
            # epoch's weights too (model.checkpoint), so nothing is lost; and Tune snapshots its state once a trial
            # has checkpointed num_to_keep times, so the checkpoint its snapshot names is still there (by score,
            # the one named could be deleted one epoch later: a killed driver's trial then had none to resume from)
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            # a line per trial start and end with the best so far, instead of Tune's boxes (see tune/progress.py)
            # the stop rules' view of the trials first, so a trial's end line counts its cost (tune/budget.py)
            callbacks=[
                BudgetWatch(),
                SweepProgress(
                    cfg.metric,
                    cfg.direction,
                    cfg.trials,
                    space.max_epochs(),
                    cfg.root,
                    cfg.options,
                    stopper=label(cfg.scheduler),
                ),
            ],
            verbose=0,
            # --time-budget, --gpu-hours, --stop-at, --patience: running trials finish their epoch (tune/budget.py)
            stop=BudgetStopper(),
        ),
    )
    return tuner


def _device_facts(device: str) -> dict[str, Any]:
    """Ray task with one trial's resources: where a trial would run (raises DeviceError if it can't use its GPU)."""
    return describe(resolve_device(device))


def check_trial_device(cfg: SweepConfig) -> None:
    """Before any trial: one task with a trial's resources checks the device there, so a node that cannot use
    the GPU Ray gives it fails the sweep at once, not each trial after its start."""
    task = released_task(_device_facts, cfg.cpus_per_trial, cfg.gpus_per_trial)  # its worker ends after the call
    log.info("trials run on: %s", ray.get(task.remote(cfg.device)))


def checked(cfg: SweepConfig) -> tuple[SweepConfig, SweepRecord]:
    """``cfg`` once the inputs passed ``before_sweep``, resolved (against its record on ``--resume``), with the
    study it is to use; and the sweep record."""
    cfg, record = before_sweep(cfg, "--resume" if cfg.resume else None, test_split=cfg.retrain)
    if not cfg.resume:  # --warm-start, --enqueue and the recipe, checked before Ray starts (a resume's study has them)
        known(cfg, record)
    return cfg, record


def run_sweep(cfg: SweepConfig) -> tune.ResultGrid:
    """Check the inputs, then run (or resume) the sweep; returns Tune's ResultGrid."""
    return run_checked(*checked(cfg))


def run_checked(cfg: SweepConfig, record: SweepRecord) -> tune.ResultGrid:
    refuse_if_spent(cfg)  # a --resume whose budget is already spent: one line, before Ray starts
    dashboard = init_ray(cfg.ray_address)
    capacity, at_once = plan(cfg)
    with capacity_requested(capacity, at_once, cfg.cpus_per_trial, cfg.gpus_per_trial):
        return _sweep(cfg, record, at_once, dashboard)


def command(name: str) -> str:
    """How to run the console command ``name`` from here: its name when it is on PATH, else this Python's copy (a
    virtualenv that is not activated), else its name."""
    if shutil.which(name):
        return name
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else name


def watch_hints(cfg: SweepConfig, dashboard: str | None) -> list[str]:
    """Where to watch the sweep, a line each: the Ray dashboard at ``dashboard`` (when there is one), with the
    command printing the token it asks for (Ray 2.60 starts a local Ray with token authentication, and `ray up`'s
    clusters use it: its page opens on an "Authentication Token Required" dialog), and TensorBoard on the trials'
    event files, in the sweep's folder (not the folder in Ray's temp folder Tune would name)."""
    hints = []
    if dashboard:
        hints.append(
            f"Ray dashboard: {dashboard} (the trials are its {TRIAL_ACTOR} actors); for the token it asks for, run "
            f"`{command('ray')} get-auth-token`"
        )
    hints.append(f"TensorBoard: `{command('tensorboard')} --logdir {shlex.quote(absolute(cfg.root))}`")
    return hints


def _sweep(cfg: SweepConfig, record: SweepRecord, at_once: int, dashboard: str | None) -> tune.ResultGrid:
    # Tune snapshots its experiment state whenever a trial has checkpointed num_to_keep times, i.e. every
    # other epoch here, and warns about it every few seconds; the snapshots are small and wanted, the warning not.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # ... and at most every 2 s besides (Tune's default waits 10 s or more): a driver killed right after a trial
    # ended then rarely leaves a snapshot without that trial, whose resume would draw another in its place
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    internals.tolerate_deleted_checkpoints()  # a resumed sweep's retention meets what its killed driver deleted
    if cfg.gpus_per_trial:
        check_trial_device(cfg)
    # The driver holds no data: each node maps the dataset, and the frozen-prefix cache its first trial
    # builds, from its own store (model.node_store).
    tuner = build_tuner(cfg, record, trial_source(cfg, record), at_once)
    use_loggers(tuner, cfg)  # --report-to: TensorBoard, MLflow, W&B (today's flags, on --resume too)
    log.info(
        "sweep %s: %d trials, study %s; watch with `optuna-dashboard %s`",
        cfg.root,
        cfg.trials,
        cfg.name,
        cfg.study_url(),
    )
    for hint in watch_hints(cfg, dashboard):
        log.info("%s", hint)
    preemption.quiet_tune_on_preemption()  # a trial moved off a node being preempted has not failed
    internals.drop_tensorboard_hint()  # Tune's would name its staging folder in Ray's temp folder, not the trials'
    # Ctrl-C or SIGTERM: Tune saves its state and stops the trials, which stay resumable (not failed in the study)
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # ours (below) stops Tune the same way, for SIGTERM too
    internals.keep_credentials_out_of_trials()  # nodes use their own; Ray would log the driver's in plain text
    STORAGE_FULL.clear()
    with graceful(internals.request_tune_stop, f"sweep {cfg.name}") as interrupted:
        with budget_session(cfg, record.search_space.max_epochs()):  # the stop rules and the cost ledger
            results = tuner.fit()
    if not interrupted and not STORAGE_FULL.is_set():
        close_interrupted(cfg.name, cfg.study_url())
    backup = study_backup(cfg, cfg.study_url())
    if backup is not None:
        backup.save()
    if interrupted:
        raise Interrupted(interrupted[0])
    if STORAGE_FULL.is_set():
        raise OSError(errno.ENOSPC, "a trial could not write its checkpoint")
    return results


def resume_command(cfg: SweepConfig) -> str:
    """The command that finishes this sweep: its record supplies everything but where it is (and its study)."""
    args = ["genre-sweep", "sweep", "--storage", cfg.storage, "--name", cfg.name, "--resume"]
    for flag, value in (
        ("--s3-endpoint", cfg.s3_endpoint),
        ("--s3-region", cfg.s3_region),
        ("--ray-address", cfg.ray_address),
    ):
        if value:
            args += [flag, value]
    return shlex.join(args)


def run(cfg: SweepConfig) -> int:
    try:
        cfg, record = checked(cfg)
    except SweepError:  # a sweep another driver runs now is said as such, not as what its half-written state shows
        lease.refuse_if_held(cfg.root, cfg.name, cfg.options)
        raise
    try:
        with lease.holding(cfg.root, cfg.name, cfg.options):  # one driver per sweep
            results = run_checked(cfg, record)
            if cfg.retrain:
                retrain_and_report(cfg, record, results, trial_source(cfg, record))
    except Interrupted as e:  # no retrain or report from a cut-off search: the same sweep, resumed, finishes it
        raise Interrupted(e.signum, f"finish with `{resume_command(cfg)}`") from None
    except Exception as e:  # a storage that stays full: a trial's writes, the study's SQLite, Tune's state
        if not (storage_full(e) or STORAGE_FULL.is_set()):  # or what followed from it (a file written half)
            raise
        raise SweepError(
            f"a disk the sweep writes to is full ({one_line(e)}): it stopped with its state kept; free space (its "
            f"storage {cfg.root}, or a node's disk, as the error says), then finish with `{resume_command(cfg)}`"
        ) from e
    return failed_trials_exit(cfg, results)


main = job_main("sweep")

if __name__ == "__main__":
    sys.exit(main())
