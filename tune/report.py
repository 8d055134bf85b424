"""The sweep report: best config, every trial, importances, history, learning curves, summary.md.

Everything is written to a local folder and then copied into the sweep's storage (local or s3://),
where it outlives the cluster.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
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

MIN_COMPLETE_FOR_IMPORTANCE = 6  # and two per searched hyperparameter


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
        summary = summary_markdown(cfg, counts, best, outcome, files, notes)
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
    searched = {name for t in complete for name in t.params}
    needed = max(MIN_COMPLETE_FOR_IMPORTANCE, 2 * len(searched))
    if len(complete) < needed:
        return (
            f"{len(complete)} complete trials are too few to attribute the score to {len(searched)} hyperparameters "
            f"(fANOVA here wants at least {needed}); run more trials"
        )
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
    """Each trial at its best epoch (complete in blue, pruned in grey) and the best complete trial so far."""
    fig, ax = plt.subplots(figsize=(7, 4))
    best, done, stopped, line = None, ([], []), ([], []), ([], [])
    for t in study.trials:
        if not t.intermediate_values:
            continue
        value = max(t.intermediate_values.values())  # the trial's best epoch, as the retrain picks
        complete = t.state == optuna.trial.TrialState.COMPLETE
        numbers, values = done if complete else stopped
        numbers.append(t.number)
        values.append(value)
        if complete:
            best = value if best is None else max(best, value)
        if best is not None:
            line[0].append(t.number)
            line[1].append(best)
    ax.scatter(*done, color="tab:blue", s=18, label="complete trial, its best epoch")
    ax.scatter(*stopped, color="tab:gray", s=18, label="pruned trial (stopped by ASHA), its best epoch")
    ax.step(*line, where="post", color="tab:red", label="best complete trial so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(metric)
    ax.set_title("optimisation history")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def trial_id(folder: str) -> str:
    """Tune's id of a trial (``5f3a2_00003``) from its folder name (``run_trial_5f3a2_00003_3_batch_size=8,...``)."""
    parts = folder.split("_")
    return f"{parts[2]}_{parts[3]}" if len(parts) > 3 and parts[:2] == ["run", "trial"] else folder


def plot_learning_curves(curves: dict[str, tuple[list[int], list[float], bool]], path: Path, metric: str) -> None:
    """Every trial's curve, named in the legend. curves: trial name -> (epochs, metric values, pruned)."""
    fig, ax = plt.subplots(figsize=(9, 4.5))
    colors = plt.get_cmap("tab20")
    for i, (name, (epochs, values, pruned)) in enumerate(sorted(curves.items())):
        ax.plot(
            epochs,
            values,
            linestyle="--" if pruned else "-",
            marker=".",
            linewidth=1,
            color=colors(i % 20),
            label=f"{trial_id(name)}{' (pruned)' if pruned else ''}",
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(f"learning curves of all {len(curves)} trials (dashed: stopped by ASHA)")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7, ncol=1 + len(curves) // 18, title="trial")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def wilson(accuracy: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95 % Wilson score interval of an accuracy measured on ``n`` independent items."""
    if n == 0:
        return 0.0, 1.0
    centre = (accuracy + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(accuracy * (1 - accuracy) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def summary_markdown(
    cfg: RetrainConfig,
    counts: dict[str, int],
    best: BestTrial,
    retrain: dict[str, Any],
    files: list[str],
    notes: tuple[str, ...] | list[str] = (),
) -> str:
    """The report's front page: the winner, its test result with its uncertainty, the caveats, what to run next."""
    trial = trial_id(Path(best.path).name)
    lines = [f"# Sweep `{cfg.name}`", "", "## Result", ""]
    lines.append(
        f"The winner is trial `{trial}`: {best.metric} **{best.value:.4f}** at epoch {best.epoch}. Its configuration "
        "was retrained and tested:"
    )
    if retrain:
        n = retrain["test_clips"]
        low, high = wilson(retrain["test_clip_acc_mean"], n)
        lines += [
            "",
            f"| on the test split ({n} clips, {retrain['test_windows']} windows) | mean ± std over "
            f"{len(retrain['seeds'])} seeds |",
            "|---|---|",
            f"| clip accuracy | **{retrain['test_clip_acc_mean']:.4f} ± {retrain['test_clip_acc_std']:.4f}** |",
            f"| clip macro-F1 | {retrain['test_clip_macro_f1_mean']:.4f} ± {retrain['test_clip_macro_f1_std']:.4f} |",
            f"| window accuracy | {retrain['test_window_acc_mean']:.4f} ± {retrain['test_window_acc_std']:.4f} |",
            "",
            f"With {n} test clips, the 95 % interval of the clip accuracy is [{low:.3f}, {high:.3f}] (Wilson): the "
            "test set's own uncertainty, larger than the spread over seeds. Each seed trained to its best epoch on "
            f"validation and was tested once; the exported model is seed {retrain['exported_seed']}'s (the best "
            "on validation).",
        ]
    lines += ["", "## Configuration", "", f"Of trial `{trial}` ([best_config.json](best_config.json)):", ""]
    lines += [f"- `{k}`: {v}" for k, v in sorted(best.config.items())]
    lines += [
        "",
        "## Trials",
        "",
        f"{sum(counts.values())} trials: {', '.join(f'{v} {k.lower()}' for k, v in sorted(counts.items()))} "
        "(pruned: stopped early by ASHA). See [trials.csv](trials.csv), [history.png](history.png) and "
        "[learning_curves.png](learning_curves.png).",
        "",
        "## Caveats",
        "",
        "- The split is random by track, stratified by genre: a track's clips and windows never cross splits, "
        "but an artist's tracks can. On GTZAN, whose tracks repeat artists (and a few recordings), that makes "
        "test accuracy higher than on unseen artists; an artist-filtered split is the stricter measure.",
        "- The winner was chosen on validation among many trials, so its validation score is optimistic; the test "
        "figures above are the ones to quote.",
        "",
        "## Next",
        "",
        "```",
        f"genre-sweep predict SONGS --model {cfg.root}/report/model",
        "python -c 'from transformers import pipeline; "
        f'print(pipeline("audio-classification", model="{cfg.root}/report/model", trust_remote_code=True)'
        '("song.wav"))\'',
        f"genre-sweep sweep --shards {cfg.shards} --storage {cfg.storage} --name {cfg.name}-more --trials 70",
        "```",
        "",
        "The first predicts songs with the exported model; the second uses it from Hugging Face transformers "
        'alone (a file path needs ffmpeg; `{"raw": array, "sampling_rate": sr}` does not); the third searches '
        f"again with more trials. An interrupted sweep is finished with `--name {cfg.name} --resume`.",
        "",
        "## Files",
        "",
    ]
    lines += [f"- [{f}]({f})" for f in files]
    if notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    lines += ["", f"Optuna study: `optuna-dashboard {cfg.study_url()}`"]
    return "\n".join(lines) + "\n"


def upload(local: Path, uri: str, options: StoreOptions) -> None:
    """Copy a local folder's files to ``uri`` (local folder or s3://)."""
    fs, root = filesystem(uri, options)
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        write_bytes(fs, join(root, str(path.relative_to(local))), path.read_bytes())


def save_json(path: Path, value: Any) -> None:
    write_atomic(path, json.dumps(value, indent=2, sort_keys=True, default=str))
