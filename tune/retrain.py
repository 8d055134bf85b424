"""Retrain the sweep's best configuration with several seeds, test each once, export, and write the report."""

from __future__ import annotations

import logging
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from data.config import resolve
from model.data import TrainData, load_data
from model.evaluate import evaluate_split, plot_confusion
from model.export import export_model
from model.train import TrainConfig, resolve_device, train

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
            | {"test_clip_acc": r["test"]["clip_acc"], "test_window_acc": r["test"]["window_acc"]}
            for r in runs
        ],
        "test_clip_acc_mean": statistics.fmean(clip),
        "test_clip_acc_std": statistics.pstdev(clip),
        "test_window_acc_mean": statistics.fmean(window),
        "test_window_acc_std": statistics.pstdev(window),
        "exported_seed": chosen["seed"],
        "chosen": chosen,
    }


def retrain_on_a_trial_node(values: dict[str, Any], data: TrainData, seeds: list[int], use_cache: bool) -> dict:
    """Ray task (a trial's resources, so a GPU node on a cluster): ``retrain`` in a scratch folder there.

    With ``use_cache`` the frozen layers below the configuration's lowest adapter run once for all seeds.
    """
    if use_cache:
        from model.prefix_cache import build_for

        start = int(values.get("encoder_min_layer_to_update", TrainConfig.encoder_min_layer_to_update))
        data = data.with_prefix(build_for(values["pretrained"], data, start))
    with tempfile.TemporaryDirectory() as tmp:
        outcome = retrain(values, data, seeds, Path(tmp))
    outcome["chosen"]["model"] = outcome["chosen"]["model"].cpu()
    return outcome


def retrain_and_report(cfg: Any, results: Any) -> dict[str, Any]:
    """After a sweep: retrain the best configuration, then write the report into ``<storage>/<name>/report``."""
    import optuna
    import ray

    from tune.report import (
        plot_history,
        plot_importances,
        plot_learning_curves,
        save_json,
        summary_markdown,
        trials_table,
        upload,
        write_csv,
    )
    from tune.space import load_space

    best = results.get_best_result(metric=cfg.metric, mode="max", scope="all")
    best_df = best.metrics_dataframe
    best_row = best_df.loc[best_df[cfg.metric].idxmax()]
    space = load_space(cfg.space)
    values = {
        "shards": cfg.shards,
        "pretrained": cfg.pretrained,
        "device": "auto",
        "s3_endpoint": cfg.s3_endpoint,
        "s3_region": cfg.s3_region,
        **space.fixed,
        **best.config,
    }
    data = load_data(cfg.shards, cfg.options, splits=("train", "val", "test"))
    study = optuna.load_study(study_name=cfg.name, storage=cfg.study_url())

    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report"
        report.mkdir()
        task = ray.remote(retrain_on_a_trial_node).options(num_cpus=cfg.cpus_per_trial, num_gpus=cfg.gpus_per_trial)
        seeds = [cfg.seed + i for i in range(cfg.retrain_seeds)]
        outcome = ray.get(task.remote(values, data, seeds, cfg.prefix_cache))
        chosen = outcome.pop("chosen")
        export_model(chosen["model"], report / "model", data.genres, data.frames, data.mel_bins)
        plot_confusion(
            np.array(chosen["test"]["confusion"]),
            list(data.genres),
            f"test, seed {chosen['seed']}: clip accuracy {chosen['test']['clip_acc']:.3f}",
            report / "confusion.png",
        )
        save_json(report / "test_metrics.json", chosen["test"])
        save_json(report / "retrain.json", outcome)
        save_json(
            report / "best_config.json",
            {
                "config": values,
                "trial": best.path,
                "epoch": int(best_row["training_iteration"]),
                cfg.metric: float(best_row[cfg.metric]),
            },
        )
        curves = {}
        for r in results:
            df = r.metrics_dataframe
            if df is None or df.empty:
                continue
            pruned = len(df) < r.config.get("num_train_epochs", len(df))
            curves[Path(r.path).name] = (df["training_iteration"].tolist(), df[cfg.metric].tolist(), pruned)
        write_csv(trials_table(study), report / "trials.csv")
        files = ["best_config.json", "trials.csv", "retrain.json", "test_metrics.json", "confusion.png"]
        notes = []
        why_not = plot_importances(study, report / "importances.png")
        if why_not:
            notes.append(f"no importances.png: {why_not}")
        else:
            files.append("importances.png")
        plot_history(study, report / "history.png", cfg.metric)
        plot_learning_curves(curves, report / "learning_curves.png", cfg.metric)
        files += ["history.png", "learning_curves.png", "model/"]
        counts: dict[str, int] = {}
        for t in study.trials:
            counts[t.state.name] = counts.get(t.state.name, 0) + 1
        summary = summary_markdown(
            cfg.name,
            counts,
            {
                "metric": cfg.metric,
                "value": float(best_row[cfg.metric]),
                "epoch": int(best_row["training_iteration"]),
                "config": best.config,
            },
            outcome,
            files,
            cfg.study_url(),
            notes,
        )
        (report / "summary.md").write_text(summary)
        url = cfg.study_url()
        if url.startswith("sqlite:///"):  # the study outlives the cluster with the rest of the report
            shutil.copyfile(url.removeprefix("sqlite:///"), report / "optuna.db")
        upload(report, cfg.root + "/report", cfg.options)
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


def main(argv: list[str] | None = None) -> int:
    from tune.sweep import retrain_main

    return retrain_main(argv)


if __name__ == "__main__":
    import sys

    sys.exit(main())
