"""``genre-sweep sweep``: Ray Tune + Optuna TPE + ASHA over the DoRA-AST space, then retrain and report.

The shards are read once in the driver and shared with every trial through Ray's object store (no
Ray Data inside trials). Each trial is one ``train()`` run reporting once per epoch with a checkpoint;
the Optuna study lives in an RDB storage (SQLite beside the results by default) so optuna-dashboard
can watch it; ``--resume`` finishes an interrupted sweep with its trials and ASHA state.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

from data.config import ConfigError, check, parse
from data.jobs import run_job
from data.store import StoreOptions, filesystem, is_s3

log = logging.getLogger(__name__)


class SweepError(RuntimeError):
    """The sweep can't run as asked; the message says why and what to change."""


def _f(default: Any, text: str, **extra: Any) -> Any:
    return dataclasses.field(default=default, metadata={"help": text, **extra})


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    shards: str = dataclasses.field(metadata={"help": "prepared dataset (folder or s3://)"})
    storage: str = dataclasses.field(metadata={"help": "folder or s3://bucket/prefix for trials, study and report"})
    name: str = _f("sweep", "experiment name: results go to <storage>/<name>")
    pretrained: str = _f("tiny", "hub id, local folder, or named config (tiny, base-random)")
    space: str | None = _f(None, "YAML file changing the search space (sections space: and fixed:)")
    trials: int = _f(35, "number of trials")
    max_concurrent_trials: int | None = _f(None, "trials at once (default: what the cluster's CPUs/GPUs hold)")
    cpus_per_trial: float = _f(1.0, "CPUs reserved per trial")
    gpus_per_trial: float = _f(0.0, "GPUs per trial; fractions pack several trials on one GPU")
    grace_period: int = _f(1, "ASHA: epochs before a trial can be stopped")
    reduction_factor: float = _f(3.0, "ASHA: keep the top 1/reduction_factor at each rung")
    max_t: int | None = _f(None, "ASHA: most epochs (default: the largest epoch count in the space)")
    metric: str = _f("val_clip_acc", "validation metric to maximise")
    seed: int = _f(0, "seed of TPE and of the trials")
    study_storage: str | None = _f(None, "SQLAlchemy URL of the Optuna study (default: SQLite beside the results)")
    max_failures: int = _f(2, "retries of a crashed trial")
    prefix_cache: bool = _f(
        True, "compute the frozen layers' output once (below the space's lowest adapter) and start every trial there"
    )
    resume: bool = _f(False, "finish an interrupted sweep of the same name")
    retrain: bool = _f(True, "retrain the best configuration, test it and write the report at the end")
    retrain_seeds: int = _f(3, "seeds of the best-config retrain")
    ray_address: str | None = _f(None, "Ray cluster address; local Ray when unset")
    s3_endpoint: str | None = _f(None, "endpoint of an S3-compatible store")
    s3_region: str | None = _f(None, "S3 region")

    def __post_init__(self) -> None:
        check(self.trials >= 1, f"trials must be >= 1, got {self.trials}")
        check(self.cpus_per_trial > 0, f"cpus_per_trial must be > 0, got {self.cpus_per_trial}")
        check(self.gpus_per_trial >= 0, f"gpus_per_trial must be >= 0, got {self.gpus_per_trial}")
        check(self.grace_period >= 1, f"grace_period must be >= 1, got {self.grace_period}")
        check(self.reduction_factor > 1, f"reduction_factor must be > 1, got {self.reduction_factor}")
        check(self.retrain_seeds >= 1, f"retrain_seeds must be >= 1, got {self.retrain_seeds}")
        check(
            self.max_concurrent_trials is None or self.max_concurrent_trials >= 1, "max_concurrent_trials must be >= 1"
        )
        check(bool(self.name) and "/" not in self.name, f"name must be a plain folder name, got {self.name!r}")

    @property
    def options(self) -> StoreOptions:
        return StoreOptions(self.s3_endpoint, self.s3_region)

    @property
    def root(self) -> str:
        return self.storage.rstrip("/") + "/" + self.name

    def study_url(self) -> str:
        if self.study_storage:
            return self.study_storage
        local = Path(self.storage) if not is_s3(self.storage) else Path("genre-sweep-studies")
        local = local.resolve() / self.name if not is_s3(self.storage) else local.resolve()
        local.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{local / ('optuna.db' if not is_s3(self.storage) else self.name + '.db')}"


def check_resources(cpus: float, gpus: float) -> None:
    """Fail at once if no alive node can ever hold one trial, instead of a trial pending forever."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if not any(n.get("CPU", 0) >= cpus and n.get("GPU", 0) >= gpus for n in nodes):
        offered = ", ".join(f"{n.get('CPU', 0):g} CPU + {n.get('GPU', 0):g} GPU" for n in nodes)
        raise SweepError(
            f"no node can hold a trial of {cpus:g} CPU + {gpus:g} GPU (nodes offer: {offered}); "
            "lower --cpus-per-trial/--gpus-per-trial or add such nodes"
        )


def concurrency(cfg: SweepConfig) -> int:
    """Trials at once: the flag, else what the cluster's CPUs (and GPUs) hold, at least one."""
    import ray

    if cfg.max_concurrent_trials:
        return cfg.max_concurrent_trials
    res = ray.cluster_resources()
    fits = [res.get("CPU", 0) // cfg.cpus_per_trial]
    if cfg.gpus_per_trial:
        fits.append(res.get("GPU", 0) // cfg.gpus_per_trial)
    return max(1, int(min(fits)))


def run_trial(config: dict[str, Any], data: Any, base: dict[str, Any]) -> None:
    """One Tune trial: ``train()`` with this configuration, reporting each epoch with its checkpoint."""
    import os
    import tempfile
    import time

    started = time.perf_counter()  # per-trial overhead: from here to the first optimizer step (first_step_s)
    from ray import tune

    from data.config import resolve
    from model.train import TrainConfig, train

    out = Path(tempfile.mkdtemp(prefix="trial-", dir=os.getcwd()))
    values = {**base, **config, "out": str(out)}
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:  # a retried or resumed trial continues where its last epoch ended
        resume_dir = out / "resume-from"
        with checkpoint.as_directory() as d:
            shutil.copytree(d, resume_dir)
        values["resume"] = str(resume_dir)

    import ray

    node_id = ray.get_runtime_context().get_node_id()  # which node ran the trial: placement is visible in results

    def report(metrics: dict[str, Any], ckpt: Path) -> None:
        tune.report({**metrics, "node_id": node_id}, checkpoint=tune.Checkpoint.from_directory(str(ckpt)))

    train(resolve(TrainConfig, values), data, report=report, started=started)


def build_tuner(cfg: SweepConfig, data_ref: Any, base: dict[str, Any]):
    """The Tuner (new, or restored with ``--resume``) and the ASHA scheduler it uses."""
    import optuna
    from ray import tune

    from tune.search import PersistentASHA, PruneAwareOptunaSearch
    from tune.space import load_space

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
        tuner._local_tuner._tune_config.scheduler = scheduler  # Tune does not save the scheduler itself
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


def _with_prefix_cache(data: Any, pretrained: str, start: int) -> tuple[Any, dict[str, Any]]:
    """Ray task: (``data`` plus the states entering layer ``start`` under ``pretrained``'s frozen weights, facts)."""
    from model.prefix_cache import build_for

    cache = build_for(pretrained, data, start)
    return data.with_prefix(cache, keep_features=False), {"gb": cache.nbytes / 1e9}


def cached_data(cfg: SweepConfig, data_ref: Any) -> Any:
    """An ObjectRef to the data with its frozen-prefix cache, built once by a task with one trial's resources.

    Only the task's small second result comes to the driver (and raises here, before any trial, if
    the model can't be built); the states stay in the object store for the trials.
    """
    import time

    import ray

    from tune.space import load_space

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


def run_sweep(cfg: SweepConfig) -> Any:
    """Run (or resume) the sweep; returns Tune's ResultGrid."""
    from data.pipeline import init_ray
    from model.data import load_data, share

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


def load_results(cfg: SweepConfig) -> Any:
    """The ResultGrid of a finished sweep in ``cfg``'s storage (for ``genre-sweep retrain``)."""
    from ray import tune

    fs, storage_path = filesystem(cfg.storage, cfg.options)
    path = storage_path + "/" + cfg.name
    if not tune.Tuner.can_restore(path, storage_filesystem=fs):
        raise SweepError(f"no sweep named {cfg.name!r} in {cfg.storage}")
    return tune.Tuner.restore(path, trainable=run_trial, storage_filesystem=fs).get_results()


def close_interrupted(cfg: SweepConfig) -> None:
    """After a finished sweep nothing runs: a study trial still RUNNING was cut off by a killed driver."""
    import optuna
    from optuna.trial import TrialState

    study = optuna.load_study(study_name=cfg.name, storage=cfg.study_url())
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(t.number, state=TrialState.FAIL)
        log.warning("study trial %d was interrupted (the sweep's driver stopped mid-trial): marked failed", t.number)


def main(argv: list[str] | None = None) -> int:
    cfg = parse(SweepConfig, argv, prog="genre-sweep sweep", description=__doc__.split("\n\n")[0])

    def body() -> None:
        results = run_sweep(cfg)
        if cfg.retrain:
            from tune.retrain import retrain_and_report

            retrain_and_report(cfg, results)

    return run_job(body, known=(SweepError, ConfigError))


def retrain_main(argv: list[str] | None = None) -> int:
    """``genre-sweep retrain``: retrain, test and report a finished sweep (one run with --no-retrain)."""
    cfg = parse(
        SweepConfig,
        argv,
        prog="genre-sweep retrain",
        description="Retrain a finished sweep's best configuration with several seeds, test it, write the report.",
    )

    def body() -> None:
        from data.pipeline import init_ray
        from tune.retrain import retrain_and_report

        init_ray(cfg.ray_address)
        retrain_and_report(cfg, load_results(cfg))

    return run_job(body, known=(SweepError, ConfigError))


if __name__ == "__main__":
    sys.exit(main())
