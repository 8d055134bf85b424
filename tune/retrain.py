"""``genre-sweep retrain``: the sweep's best configuration retrained with several seeds, each tested once.

Also the sweep's last stage: ``retrain_and_report`` picks the best trial, retrains it on a trial's
resources (a GPU node on a cluster) and hands the outcome to ``report.write_report``.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import ray
from ray import tune

from genre_sweep.cli import job_main
from genre_sweep.config import resolve
from genre_sweep.data.shards import open_dataset
from genre_sweep.errors import one_line, user_error
from genre_sweep.jobs import worker_logging
from genre_sweep.model.configs import TrainConfig
from genre_sweep.model.data import TrainData
from genre_sweep.model.device import resolve_device
from genre_sweep.model.evaluate import evaluate_split
from genre_sweep.model.node_store import NodeData
from genre_sweep.model.train import train
from genre_sweep.ray_start import init_ray
from genre_sweep.store import filesystem
from genre_sweep.tune.configs import RetrainConfig, SweepError
from genre_sweep.tune.preflight import before_sweep, cache_start
from genre_sweep.tune.report import BestTrial, write_report
from genre_sweep.tune.space import load_space
from genre_sweep.tune.trial import run_trial

log = logging.getLogger(__name__)


def retrain(values: dict[str, Any], data: TrainData, seeds: list[int], work: Path) -> dict[str, Any]:
    """Train ``values`` once per seed (best epoch on validation), evaluate each on test once.

    Returns per-seed metrics, their mean and std, and the best-on-validation seed's model and evaluation.
    """
    runs = []
    for seed in seeds:
        cfg = resolve(TrainConfig, {**values, "seed": seed, "out": str(work / f"seed-{seed}"), "resume": None})
        result = train(cfg, data)
        test = evaluate_split(
            result.model, data.split("test"), list(data.genres), cfg.eval_batch_size, resolve_device(cfg.device)
        )
        runs.append(
            {
                "seed": seed,
                "best_epoch": result.best_epoch,
                "val_clip_acc": result.best_metrics["val_clip_acc"],
                "test": test,
                "model": result.model,
            }
        )
        log.info(
            "retrain seed %d: best epoch %d, val clip acc %.3f, test clip acc %.3f",
            seed,
            result.best_epoch,
            result.best_metrics["val_clip_acc"],
            test["clip_acc"],
        )
    clip = [r["test"]["clip_acc"] for r in runs]
    window = [r["test"]["window_acc"] for r in runs]
    chosen = max(runs, key=lambda r: r["val_clip_acc"])
    return {
        "seeds": seeds,
        "per_seed": [
            {k: v for k, v in r.items() if k not in ("model", "test")}
            | {
                "test_clip_acc": r["test"]["clip_acc"],
                "test_window_acc": r["test"]["window_acc"],
                "test_clip_macro_f1": r["test"]["clip_macro_f1"],
            }
            for r in runs
        ],
        "test_clips": chosen["test"]["clips"],
        "test_windows": chosen["test"]["windows"],
        "test_clip_macro_f1_mean": statistics.fmean(r["test"]["clip_macro_f1"] for r in runs),
        "test_clip_macro_f1_std": statistics.pstdev(r["test"]["clip_macro_f1"] for r in runs),
        "test_clip_acc_mean": statistics.fmean(clip),
        "test_clip_acc_std": statistics.pstdev(clip),
        "test_window_acc_mean": statistics.fmean(window),
        "test_window_acc_std": statistics.pstdev(window),
        "exported_seed": chosen["seed"],
        "chosen": chosen,
    }


def retrain_on_a_trial_node(values: dict[str, Any], source: NodeData, seeds: list[int]) -> dict:
    """Ray task (a trial's resources, so a GPU node on a cluster): ``retrain`` in a scratch folder there, on the
    data mapped from that node's store, with the frozen-prefix cache there when ``source`` names its layer (the
    trials' states reused, the test split's added).
    """
    worker_logging()  # each seed's epoch lines reach the driver's output (and `ray job logs`)
    data = source.load(("train", "val", "test"), values["pretrained"], values.get("device", "auto"))
    with tempfile.TemporaryDirectory() as tmp:
        outcome = retrain(values, data, seeds, Path(tmp))
    outcome["chosen"]["model"] = outcome["chosen"]["model"].cpu()
    return outcome


def load_results(cfg: RetrainConfig) -> tune.ResultGrid:
    """The ResultGrid of a finished sweep in ``cfg``'s storage (checked to be there and ours: ``before_sweep``)."""
    fs, storage_path = filesystem(cfg.storage, cfg.options)
    path = storage_path + "/" + cfg.name
    return tune.Tuner.restore(path, trainable=run_trial, storage_filesystem=fs).get_results()


def best_trial(cfg: RetrainConfig, results: tune.ResultGrid) -> BestTrial:
    """The trial with the best epoch of all by ``cfg.metric``, and that epoch; SweepError when no trial has one."""
    scored = [
        r
        for r in results
        if r.metrics_dataframe is not None
        and cfg.metric in r.metrics_dataframe
        and r.metrics_dataframe[cfg.metric].notna().any()
    ]
    if not scored:
        failed = [r for r in results if r.error is not None]
        why = ""
        if failed:
            error = failed[0].error  # Ray's wrapper: the trial's own error is its cause
            cause = user_error(error) or getattr(error, "cause", error)
            why = f"; the first error: {one_line(cause)} (in {failed[0].path})"
        raise SweepError(
            f"no trial of {cfg.root} reported a {cfg.metric} to retrain from ({len(failed)} of {len(results)} "
            f"trials failed{why})"
        )
    best = results.get_best_result(metric=cfg.metric, mode="max", scope="all", filter_nan_and_inf=True)
    df = best.metrics_dataframe
    row = df.loc[df[cfg.metric].idxmax()]
    return BestTrial(
        path=best.path,
        config=dict(best.config),
        epoch=int(row["training_iteration"]),
        metric=cfg.metric,
        value=float(row[cfg.metric]),
    )


def retrain_and_report(cfg: RetrainConfig, results: tune.ResultGrid) -> dict[str, Any]:
    """After a sweep: retrain the best configuration on a trial's resources, then write the report."""
    best = best_trial(cfg, results)
    values = {
        "shards": cfg.shards,
        "pretrained": cfg.pretrained,
        "device": cfg.device,
        "s3_endpoint": cfg.s3_endpoint,
        "s3_region": cfg.s3_region,
        **load_space(cfg.space).fixed,
        **best.config,
    }
    # the manifest only, for the report (the retrain's node maps the data itself); before_sweep checked it
    dataset = open_dataset(cfg.shards, cfg.options)
    task = ray.remote(retrain_on_a_trial_node).options(num_cpus=cfg.cpus_per_trial, num_gpus=cfg.gpus_per_trial)
    seeds = [cfg.seed + i for i in range(cfg.retrain_seeds)]
    start = int(values.get("encoder_min_layer_to_update", TrainConfig.encoder_min_layer_to_update))
    start = cache_start(cfg, start, ("train", "val", "test"))
    source = NodeData(cfg.shards, cfg.options, cfg.node_store, start, cfg.node_disk_gb)
    outcome = ray.get(task.remote(values, source, seeds))
    chosen = outcome.pop("chosen")  # the best-on-validation seed: its model and test evaluation
    write_report(cfg, results, best, values, outcome, chosen, dataset)
    log.info(
        "report written to %s/report: test clip accuracy %.4f ± %.4f over %d seeds",
        cfg.root,
        outcome["test_clip_acc_mean"],
        outcome["test_clip_acc_std"],
        len(outcome["seeds"]),
    )
    print(
        f"test clip accuracy {outcome['test_clip_acc_mean']:.4f} ± {outcome['test_clip_acc_std']:.4f} "
        f"({len(outcome['seeds'])} seeds); report: {cfg.root}/report/summary.md"
    )
    return outcome


def run(cfg: RetrainConfig) -> None:
    cfg = dataclasses.replace(cfg, study_storage=before_sweep(cfg, "retrain", test_split=True))
    init_ray(cfg.ray_address)
    retrain_and_report(cfg, load_results(cfg))


main = job_main("retrain")

if __name__ == "__main__":
    sys.exit(main())
