"""The sweep report: best config, every trial, importances, history, learning curves, summary.md.

Everything is written to a local folder and then copied into the sweep's storage (local or s3://),
where it outlives the cluster.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import optuna  # noqa: E402

from genre_sweep.data.shards import Dataset  # noqa: E402
from genre_sweep.model.evaluate import plot_confusion  # noqa: E402
from genre_sweep.model.export import export_model  # noqa: E402
from genre_sweep.store import StoreOptions, filesystem, join, write_atomic, write_bytes  # noqa: E402
from genre_sweep.tune.configs import RetrainConfig  # noqa: E402

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class BestTrial:
    """The sweep's best trial: where Tune keeps it, its configuration, and its best epoch's score."""

    path: str
    config: dict[str, Any]
    epoch: int
    metric: str
    value: float


def write_report(
    cfg: RetrainConfig,
    results: Any,
    best: BestTrial,
    values: dict[str, Any],
    outcome: dict[str, Any],
    chosen: dict[str, Any],
    data: Dataset,
) -> None:
    """Write ``<storage>/<name>/report``: the exported model, test metrics, every trial, plots and summary.md.

    ``results`` is Tune's ResultGrid, ``values`` the retrained configuration, ``outcome`` the retrain's
    per-seed figures and ``chosen`` the best-on-validation seed (its model and test evaluation).
    """
    study = optuna.load_study(study_name=cfg.name, storage=cfg.study_url())
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report"
        report.mkdir()
        export_model(chosen["model"], report / "model", data.genres, data.frames, data.mel_bins, base=cfg.pretrained)
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
            {"config": values, "trial": best.path, "epoch": best.epoch, best.metric: best.value},
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
            {"metric": best.metric, "value": best.value, "epoch": best.epoch, "config": best.config},
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


def trials_table(study: optuna.Study) -> list[dict[str, Any]]:
    """One row per trial: number, state, epochs run, value, params, intermediate values."""
    rows = []
    for t in study.trials:
        rows.append(
            {
                "number": t.number,
                "state": t.state.name,
                "epochs_run": len(t.intermediate_values),  # every epoch is reported, the last included
                "value": t.value,
                **{f"param_{k}": v for k, v in t.params.items()},
            }
        )
    return rows


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    import csv

    fields = sorted(
        {k for r in rows for k in r}, key=lambda k: (k not in ("number", "state", "epochs_run", "value"), k)
    )
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def plot_importances(study: optuna.Study, path: Path) -> str | None:
    """fANOVA importances as a PNG; returns why none could be computed, or None when written."""
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(complete) < 2:
        return f"fANOVA needs at least 2 complete trials, the study has {len(complete)}"
    try:
        importances = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0)
        )
    except RuntimeError as e:  # e.g. every complete trial scored the same: nothing to attribute
        return f"fANOVA could not be computed: {e}"
    names = list(importances)[::-1]
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(names) + 1.5))
    ax.barh(names, [importances[n] for n in names], color="tab:blue")
    ax.set_xlabel("fANOVA importance")
    ax.set_title(f"hyperparameter importances ({len(complete)} complete trials)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


def plot_history(study: optuna.Study, path: Path, metric: str) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    best = None
    xs, ys, bests = [], [], []
    for t in study.trials:
        value = (
            t.value if t.value is not None else (max(t.intermediate_values.values()) if t.intermediate_values else None)
        )
        if value is None:
            continue
        xs.append(t.number)
        ys.append(value)
        if t.state == optuna.trial.TrialState.COMPLETE:
            best = value if best is None else max(best, value)
        bests.append(best)
    colors = ["tab:blue" if study.trials[x].state.name == "COMPLETE" else "tab:gray" for x in xs]
    ax.scatter(xs, ys, c=colors, s=18, label="trial (grey: pruned, best epoch so far)")
    ax.step(xs, bests, where="post", color="tab:red", label="best complete")
    ax.set_xlabel("trial")
    ax.set_ylabel(metric)
    ax.set_title("optimisation history")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_learning_curves(curves: dict[str, tuple[list[int], list[float], bool]], path: Path, metric: str) -> None:
    """curves: trial name -> (epochs, metric values, pruned)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for epochs, values, pruned in curves.values():
        ax.plot(
            epochs,
            values,
            linestyle="--" if pruned else "-",
            alpha=0.6 if pruned else 0.9,
            linewidth=1,
            color="tab:gray" if pruned else None,
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(f"learning curves of {len(curves)} trials (dashed: stopped by ASHA)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summary_markdown(
    name: str,
    counts: dict[str, int],
    best: dict[str, Any],
    retrain: dict[str, Any],
    files: list[str],
    study_url: str,
    notes: tuple[str, ...] | list[str] = (),
) -> str:
    lines = [
        f"# Sweep `{name}`",
        "",
        f"Trials: {sum(counts.values())} ({', '.join(f'{v} {k.lower()}' for k, v in sorted(counts.items()))}).",
        "",
        f"Best trial: {best['metric']} = {best['value']:.4f} at epoch {best['epoch']}.",
        "",
        "Best configuration ([best_config.json](best_config.json)):",
        "",
    ]
    lines += [f"- `{k}`: {v}" for k, v in sorted(best["config"].items())]
    if retrain:
        lines += [
            "",
            f"Retrained with {len(retrain['seeds'])} seeds (best epoch chosen on validation), tested once each:",
            "",
            f"- test clip accuracy: **{retrain['test_clip_acc_mean']:.4f} ± {retrain['test_clip_acc_std']:.4f}**",
            f"- test window accuracy: {retrain['test_window_acc_mean']:.4f} ± {retrain['test_window_acc_std']:.4f}",
            f"- exported model: [model/](model/) (seed {retrain['exported_seed']})",
        ]
    lines += ["", "Files:", ""] + [f"- [{f}]({f})" for f in files]
    if notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    lines += ["", f"Optuna study: `optuna-dashboard {study_url}`"]
    return "\n".join(lines) + "\n"


def upload(local: Path, uri: str, options: StoreOptions) -> None:
    """Copy a local folder's files to ``uri`` (local folder or s3://)."""
    fs, root = filesystem(uri, options)
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        write_bytes(fs, join(root, str(path.relative_to(local))), path.read_bytes())


def save_json(path: Path, value: Any) -> None:
    write_atomic(path, json.dumps(value, indent=2, sort_keys=True, default=str))
