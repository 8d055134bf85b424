"""``genre-sweep sweep``: Ray Tune + Optuna TPE + ASHA over the DoRA-AST space, then retrain and report.

The shards are read once in the driver and shared with every trial through Ray's object store (no
Ray Data inside trials). Each trial is one ``train()`` run reporting once per epoch with a checkpoint;
the Optuna study lives in an RDB storage (SQLite beside the results by default) so optuna-dashboard
can watch it; ``--resume`` finishes an interrupted sweep with its trials and ASHA state.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import optuna
import ray
from optuna.trial import TrialState
from ray import tune

from genre_sweep.cli import job_main
from genre_sweep.model.data import TrainData, load_data, share
from genre_sweep.model.prefix_cache import build_for
from genre_sweep.ray_start import init_ray
from genre_sweep.store import filesystem
from genre_sweep.tune import internals
from genre_sweep.tune.configs import SweepConfig, SweepError
from genre_sweep.tune.retrain import retrain_and_report
from genre_sweep.tune.search import PersistentASHA, PruneAwareOptunaSearch
from genre_sweep.tune.space import load_space
from genre_sweep.tune.trial import run_trial

log = logging.getLogger(__name__)


def check_resources(cpus: float, gpus: float) -> None:
    """Fail at once if no alive node can ever hold one trial, instead of a trial pending forever."""
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if not any(n.get("CPU", 0) >= cpus and n.get("GPU", 0) >= gpus for n in nodes):
        offered = ", ".join(f"{n.get('CPU', 0):g} CPU + {n.get('GPU', 0):g} GPU" for n in nodes)
        raise SweepError(
            f"no node can hold a trial of {cpus:g} CPU + {gpus:g} GPU (nodes offer: {offered}); "
            "lower --cpus-per-trial/--gpus-per-trial or add such nodes"
        )


def concurrency(cfg: SweepConfig) -> int:
    """Trials at once: the flag, else what the cluster's CPUs (and GPUs) hold, at least one."""
    if cfg.max_concurrent_trials:
        return cfg.max_concurrent_trials
    res = ray.cluster_resources()
    fits = [res.get("CPU", 0) // cfg.cpus_per_trial]
    if cfg.gpus_per_trial:
        fits.append(res.get("GPU", 0) // cfg.gpus_per_trial)
    return max(1, int(min(fits)))


def build_tuner(cfg: SweepConfig, data_ref: Any, base: dict[str, Any]) -> tuple[tune.Tuner, PersistentASHA]:
    """The Tuner (new, or restored with ``--resume``) and the ASHA scheduler it uses."""
    space = load_space(cfg.space)
    fs, storage_path = filesystem(cfg.storage, cfg.options)  # with a filesystem given, Tune wants bucket/key paths
    experiment_path = storage_path + "/" + cfg.name
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, data=data_ref, base={**base, **space.fixed}),
        {"cpu": cfg.cpus_per_trial, "gpu": cfg.gpus_per_trial},
    )
    scheduler = PersistentASHA(
        # beside the experiment folder, not in it: a resumed Tune re-uploads its stale copy of that folder
        state_uri=cfg.root + "-asha-state.json",
        options=cfg.options,
        time_attr="training_iteration",
        grace_period=cfg.grace_period,
        reduction_factor=cfg.reduction_factor,
        max_t=cfg.max_t or space.max_epochs(),
        # metric and mode here, not in TuneConfig: a restored Tuner does not hand them to a new scheduler
        metric=cfg.metric,
        mode="max",
    )
    if cfg.resume:
        if not tune.Tuner.can_restore(experiment_path, storage_filesystem=fs):
            raise SweepError(f"--resume: no sweep to resume at {cfg.root}")
        scheduler.restore_state()
        tuner = tune.Tuner.restore(experiment_path, trainable=trainable, resume_errored=True, storage_filesystem=fs)
        internals.set_restored_scheduler(tuner, scheduler)  # Tune does not save the scheduler itself
        return tuner, scheduler
    searcher = PruneAwareOptunaSearch(
        space=space.distributions(),
        metric=cfg.metric,
        mode="max",
        sampler=optuna.samplers.TPESampler(seed=cfg.seed),
        storage=optuna.storages.RDBStorage(cfg.study_url()),
        study_name=cfg.name,
        default_epochs=int(space.fixed.get("num_train_epochs", 13)),
    )
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=cfg.trials,
            max_concurrent_trials=concurrency(cfg),
        ),
        run_config=tune.RunConfig(
            name=cfg.name,
            storage_path=storage_path,
            storage_filesystem=fs,
            failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            verbose=1,
        ),
    )
    return tuner, scheduler


def _with_prefix_cache(data: TrainData, pretrained: str, start: int) -> tuple[TrainData, dict[str, Any]]:
    """Ray task: (``data`` plus the states entering layer ``start`` under ``pretrained``'s frozen weights, facts)."""
    cache = build_for(pretrained, data, start)
    return data.with_prefix(cache, keep_features=False), {"gb": cache.nbytes / 1e9}


def cached_data(cfg: SweepConfig, data_ref: Any) -> Any:
    """An ObjectRef to the data with its frozen-prefix cache, built once by a task with one trial's resources.

    Only the task's small second result comes to the driver (and raises here, before any trial, if
    the model can't be built); the states stay in the object store for the trials.
    """
    start = load_space(cfg.space).lowest_adapted_layer()
    began = time.perf_counter()
    task = ray.remote(_with_prefix_cache).options(
        num_cpus=cfg.cpus_per_trial, num_gpus=cfg.gpus_per_trial, num_returns=2
    )
    data_with_cache, facts = task.remote(data_ref, cfg.pretrained, start)
    facts = ray.get(facts)
    log.info(
        "frozen-prefix cache: states entering layer %d, %.2f GB bf16, ready in %.1f s",
        start,
        facts["gb"],
        time.perf_counter() - began,
    )
    return data_with_cache


def run_sweep(cfg: SweepConfig) -> tune.ResultGrid:
    """Run (or resume) the sweep; returns Tune's ResultGrid."""
    init_ray(cfg.ray_address)
    check_resources(cfg.cpus_per_trial, cfg.gpus_per_trial)
    data = load_data(cfg.shards, cfg.options, splits=("train", "val"))
    base = {
        "shards": cfg.shards,
        "pretrained": cfg.pretrained,
        "seed": cfg.seed,
        "device": "auto",  # each trial takes CUDA where its node has it
        "s3_endpoint": cfg.s3_endpoint,
        "s3_region": cfg.s3_region,
    }
    data_ref = share(data)
    if cfg.prefix_cache:
        data_ref = cached_data(cfg, data_ref)
    tuner, _ = build_tuner(cfg, data_ref, base)
    log.info(
        "sweep %s: %d trials, study %s; watch with `optuna-dashboard %s`",
        cfg.root,
        cfg.trials,
        cfg.name,
        cfg.study_url(),
    )
    results = tuner.fit()
    close_interrupted(cfg)
    return results


def close_interrupted(cfg: SweepConfig) -> None:
    """After a finished sweep nothing runs: a study trial still RUNNING was cut off by a killed driver."""
    study = optuna.load_study(study_name=cfg.name, storage=cfg.study_url())
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(t.number, state=TrialState.FAIL)
        log.warning("study trial %d was interrupted (the sweep's driver stopped mid-trial): marked failed", t.number)


def run(cfg: SweepConfig) -> None:
    results = run_sweep(cfg)
    if cfg.retrain:
        retrain_and_report(cfg, results)


main = job_main("sweep")

if __name__ == "__main__":
    sys.exit(main())
