"""The sweep report: the chosen configuration and its confirmation, every trial, importances, history, learning
curves, summary.md.

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
from genre_sweep.model.configs import score  # noqa: E402
from genre_sweep.model.evaluate import plot_confusion  # noqa: E402
from genre_sweep.model.export import export_model  # noqa: E402
from genre_sweep.store import StoreOptions, filesystem, join, write_atomic, write_bytes  # noqa: E402
from genre_sweep.tune.configs import RetrainConfig  # noqa: E402
from genre_sweep.tune.confirm import Confirmation, wilson  # noqa: E402
from genre_sweep.tune.record import SweepRecord  # noqa: E402
from genre_sweep.tune.trial import TRIAL_ERROR  # noqa: E402

log = logging.getLogger(__name__)

MIN_COMPLETE_FOR_IMPORTANCE = 6  # and two per searched hyperparameter


def write_report(
    cfg: RetrainConfig,
    record: SweepRecord,
    results: Any,
    confirmation: Confirmation,
    tested: dict[str, Any],
    data: Dataset,
    failed: list[tuple[str, str]],
) -> None:
    """Write ``<storage>/<name>/report``: the exported model, the confirmation, test metrics, every trial, plots and
    summary.md.

    ``results`` is Tune's ResultGrid, ``tested`` the chosen configuration's test evaluation (``retrain.test_chosen``,
    with the exported seed's model), ``failed`` each failed trial's name and reason.
    """
    study = optuna.load_study(study_name=cfg.name, storage=cfg.study_url())
    chosen = confirmation.chosen
    chosen_config = {k: v for k, v in confirmation.runs_of(chosen.trial)[0].config.items() if k != "seed"}
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report"
        report.mkdir()
        export_model(tested["model"], report / "model", data.genres, data.frames, data.mel_bins, base=cfg.pretrained)
        exported = tested["exported_test"]
        plot_confusion(
            np.array(exported["confusion"]),
            list(data.genres),
            f"test, seed {tested['exported_seed']}: clip accuracy {exported['clip_acc']:.3f}",
            report / "confusion.png",
        )
        save_json(report / "test_metrics.json", exported)
        save_json(
            report / "retrain.json",
            {
                **{k: v for k, v in tested.items() if k not in ("model", "exported_test")},
                "confirmation": {
                    "metric": confirmation.metric,
                    "mode": confirmation.mode,
                    "seconds": confirmation.seconds,
                    "val_clips": confirmation.val_clips,
                    "chosen": chosen.trial,
                    "candidates": [
                        {
                            **dataclasses.asdict(c),
                            "mean": confirmation.mean(c.trial),
                            "std": confirmation.std(c.trial),
                            "within_noise": c in confirmation.within_noise(),
                        }
                        for c in confirmation.candidates
                    ],
                    "runs": [dataclasses.asdict(r) for r in confirmation.runs],
                },
            },
        )
        save_json(
            report / "best_config.json",
            {
                "trial": chosen.trial,
                "folder": chosen.folder,
                "params": chosen.params,
                "config": chosen_config,
                "seeds": tested["seeds"],
                "search": {"metric": cfg.metric, "mode": cfg.direction, "value": chosen.value, "epoch": chosen.epoch},
                "confirmation": {"mean": confirmation.mean(chosen.trial), "std": confirmation.std(chosen.trial)},
            },
        )
        (report / "sweep_record.json").write_bytes(record.as_json())
        (report / "space.yaml").write_text(record.search_space.as_yaml())
        curves = {}
        for r in results:
            df = r.metrics_dataframe
            if df is None or df.empty or cfg.metric not in df or (r.metrics and TRIAL_ERROR in r.metrics):
                continue
            how = "failed" if r.error is not None else "pruned"
            if r.error is None and len(df) >= r.config.get("num_train_epochs", record.search_space.max_epochs()):
                how = ""
            curves[Path(r.path).name] = (df["training_iteration"].tolist(), df[cfg.metric].tolist(), how)
        write_csv(trials_table(study, cfg.direction), report / "trials.csv")
        files = ["best_config.json", "trials.csv", "retrain.json", "test_metrics.json", "confusion.png"]
        notes = []
        why_not = plot_importances(study, report / "importances.png")
        if why_not:
            notes.append(f"no importances.png: {why_not}")
        else:
            files.append("importances.png")
        plot_history(study, report / "history.png", cfg.metric, cfg.direction)
        plot_learning_curves(curves, report / "learning_curves.png", cfg.metric)
        files += ["history.png", "learning_curves.png", "sweep_record.json", "space.yaml", "model/"]
        counts: dict[str, int] = {}
        for t in study.trials:
            counts[t.state.name] = counts.get(t.state.name, 0) + 1
        summary = summary_markdown(cfg, record, counts, confirmation, tested, chosen_config, failed, files, notes)
        (report / "summary.md").write_text(summary)
        url = cfg.study_url()
        if url.startswith("sqlite:///"):  # the study outlives the cluster with the rest of the report
            shutil.copyfile(url.removeprefix("sqlite:///"), report / "optuna.db")
        upload(report, cfg.root + "/report", cfg.options)


def best_and_last(trial: optuna.trial.FrozenTrial, mode: str) -> tuple[Any, Any, Any, Any]:
    """A study trial's best epoch's value and epoch, and its last epoch's: as the searcher recorded them (the best by
    the rule training keeps its weights by), else from its per-epoch values (by ``mode``, the earlier on a tie)."""
    attrs = trial.user_attrs
    if "best_epoch" in attrs:
        return attrs["best_value"], attrs["best_epoch"], attrs.get("last_value"), attrs.get("last_epoch")
    finite = {e: v for e, v in trial.intermediate_values.items() if v is not None and math.isfinite(v)}
    if not finite:
        return None, None, None, None
    best = max(sorted(finite), key=lambda e: score(finite[e], mode))
    last = max(finite)
    return finite[best], best, finite[last], last


TABLE_FIRST = (
    "trial",
    "number",
    "state",
    "best_value",
    "best_epoch",
    "last_value",
    "last_epoch",
    "epochs_run",
    "study_value",
    "fail_reason",
)


def trials_table(study: optuna.Study, mode: str) -> list[dict[str, Any]]:
    """One row per trial: its name (``trial``, as in the progress lines and the report) and study number, its state,
    its best epoch's value and epoch (what the report ranks by), its last epoch's (where a pruned trial stopped),
    the epochs it ran, the value the study holds (``study_value``: Optuna keeps the best epoch for a complete trial
    and the last epoch for a pruned one), why it failed, and its searched values."""
    rows = []
    for t in study.trials:
        best, best_epoch, last, last_epoch = best_and_last(t, mode)
        rows.append(
            {
                "trial": t.user_attrs.get("trial", ""),
                "number": t.number,
                "state": t.state.name,
                "best_value": best,
                "best_epoch": best_epoch,
                "last_value": last,
                "last_epoch": last_epoch,
                "epochs_run": len(t.intermediate_values),  # every epoch is reported, the last included
                "study_value": t.value,
                "fail_reason": t.user_attrs.get("fail_reason", ""),
                **{f"param_{k}": v for k, v in t.params.items()},
            }
        )
    return rows


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    import csv

    first = [k for k in TABLE_FIRST if any(k in r for r in rows)]
    fields = first + sorted({k for r in rows for k in r} - set(first))
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


def plot_history(study: optuna.Study, path: Path, metric: str, mode: str) -> None:
    """Each trial at its best epoch (complete in blue, pruned in grey; failed ones have no score), and the best
    complete trial so far; each trial named on the axis as everywhere else."""
    fig, ax = plt.subplots(figsize=(max(7.0, 0.22 * len(study.trials) + 2), 4.5))
    pick = max if mode == "max" else min
    best, done, stopped, line, names = None, ([], []), ([], []), ([], []), {}
    for t in study.trials:
        value = best_and_last(t, mode)[0]  # the trial's best epoch, as the confirmation ranks
        if value is None or t.state == optuna.trial.TrialState.FAIL:
            continue
        names[t.number] = t.user_attrs.get("trial", str(t.number))
        complete = t.state == optuna.trial.TrialState.COMPLETE
        numbers, values = done if complete else stopped
        numbers.append(t.number)
        values.append(value)
        if complete:
            best = value if best is None else pick(best, value)
        if best is not None:
            line[0].append(t.number)
            line[1].append(best)
    ax.scatter(*done, color="tab:blue", s=18, label="complete trial, its best epoch")
    ax.scatter(*stopped, color="tab:gray", s=18, label="pruned trial (stopped by ASHA), its best epoch")
    ax.step(*line, where="post", color="tab:red", label="best complete trial so far")
    ax.set_xticks(list(names), list(names.values()), rotation=90, fontsize=7)
    ax.set_xlabel("trial, in the order the study drew them")
    ax.set_ylabel(f"{metric} at the trial's best epoch")
    ax.set_title(f"optimisation history ({'higher' if mode == 'max' else 'lower'} is better)")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_learning_curves(curves: dict[str, tuple[list[int], list[float], str]], path: Path, metric: str) -> None:
    """Every trial's curve, named in the legend. curves: trial name -> (epochs, metric values, how it ended early:
    "pruned", "failed" or "")."""
    fig, ax = plt.subplots(figsize=(9, 4.5))
    colors = plt.get_cmap("tab20")
    for i, (name, (epochs, values, pruned)) in enumerate(sorted(curves.items())):
        ax.plot(
            epochs,
            values,
            linestyle="--" if pruned else "-",  # stopped early, by ASHA or a failure
            marker=".",
            linewidth=1,
            color=colors(i % 20),
            label=f"{name}{f' ({pruned})' if pruned else ''}",
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(f"learning curves of all {len(curves)} trials (dashed: stopped early by ASHA, or failed)")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7, ncol=1 + len(curves) // 18, title="trial")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def next_sweep(cfg: RetrainConfig, record: SweepRecord) -> str:
    """The command of a larger sweep of the same space, objective, model and settings (``space.yaml``: the report's
    copy of the space)."""
    settings = {k: v for k, v in record.settings.items() if k not in ("trials", "max_concurrent_trials")}
    flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in settings.items() if v is not None)
    return (
        f"genre-sweep sweep --shards {cfg.shards} --storage {cfg.storage} --name {cfg.name}-more --trials 70 "
        f"--space space.yaml {flags}"
    )


def summary_markdown(
    cfg: RetrainConfig,
    record: SweepRecord,
    counts: dict[str, int],
    confirmation: Confirmation,
    tested: dict[str, Any],
    config: dict[str, Any],
    failed: list[tuple[str, str]],
    files: list[str],
    notes: tuple[str, ...] | list[str] = (),
) -> str:
    """The report's front page: the chosen configuration and how it was chosen, its test result with its
    uncertainty, the trials (failed ones with why), the caveats, what to run next."""
    chosen, metric = confirmation.chosen, confirmation.metric
    seeds = len(tested["seeds"])
    lines = [f"# Sweep `{cfg.name}`", "", "## Result", ""]
    better = "higher" if confirmation.mode == "max" else "lower"
    if len(confirmation.candidates) > 1:
        how = (
            f"the best mean validation {metric} ({better} is better) over {seeds} seed{'s' if seeds > 1 else ''} "
            f"among the search's top {len(confirmation.candidates)} (see Confirmation)"
        )
    else:
        how = (
            f"the search's best by its best epoch's validation {metric} ({better} is better), retrained with "
            f"{seeds} seed{'s' if seeds > 1 else ''} (--confirm-top 1: not compared with the runners-up)"
        )
    lines.append(f"The chosen configuration is trial `{chosen.trial}`'s: {how}. It alone was tested:")
    n = tested["test_clips"]
    low, high = wilson(tested["test_clip_acc_mean"], n)
    spread = tested["test_clip_acc_std"]
    compared = (
        "beside which the spread over seeds is unknown with one seed"
        if seeds < 2
        else f"{'larger' if (high - low) / 2 > spread else 'no larger'} than the spread over seeds (std {spread:.3f})"
    )
    lines += [
        "",
        f"| on the test split ({n} clips, {tested['test_windows']} windows) | mean ± std over {seeds} seeds |",
        "|---|---|",
        f"| clip accuracy | **{tested['test_clip_acc_mean']:.4f} ± {tested['test_clip_acc_std']:.4f}** |",
        f"| clip macro-F1 | {tested['test_clip_macro_f1_mean']:.4f} ± {tested['test_clip_macro_f1_std']:.4f} |",
        f"| window accuracy | {tested['test_window_acc_mean']:.4f} ± {tested['test_window_acc_std']:.4f} |",
        "",
        f"With {n} test clips, the 95 % interval of the clip accuracy is [{low:.3f}, {high:.3f}] (Wilson): the test "
        f"set's own uncertainty, {compared}. Each seed trained to its best epoch on validation and was tested once; "
        f"the exported model is seed {tested['exported_seed']}'s (the best on validation).",
        "",
        "## Confirmation",
        "",
        f"The search's best {len(confirmation.candidates)} configurations (by their best epoch's validation {metric}), "
        f"each retrained with seeds {', '.join(map(str, tested['seeds']))} from the sweep record's trial template:",
        "",
        f"| | trial | search: {metric} (epoch) | retrained: mean ± std | per seed |",
        "|---|---|---|---|---|",
    ]
    tied = confirmation.within_noise()
    for c in confirmation.candidates:
        mark = "**chosen**" if c is chosen else ("within noise" if c in tied else "")
        per_seed = ", ".join(f"{v:.3f}" for v in confirmation.values(c.trial))
        lines.append(
            f"| {mark} | `{c.trial}` | {c.value:.4f} ({c.epoch}) | {confirmation.mean(c.trial):.4f} ± "
            f"{confirmation.std(c.trial):.4f} | {per_seed} |"
        )
    retrains = len(confirmation.runs)
    lines += [
        "",
        confirmation.verdict(),
        "",
        f"Cost: {len(confirmation.candidates)} configurations x {seeds} seeds = {retrains} retrains in "
        f"{confirmation.seconds:.1f} s of wall time (each on a trial's resources: {cfg.cpus_per_trial:g} CPU + "
        f"{cfg.gpus_per_trial:g} GPU, as many at once as the cluster holds), then the chosen one's {seeds} tests.",
        "",
        "## Configuration",
        "",
        f"Trial `{chosen.trial}`'s searched values (**bold**) on the sweep record's template "
        "([best_config.json](best_config.json), [sweep_record.json](sweep_record.json)):",
        "",
    ]
    shown = {k: f"{v:.4g}" if isinstance(v, float) else v for k, v in config.items()}  # in full in best_config.json
    lines += [f"- `{k}`: **{v}**" if k in chosen.params else f"- `{k}`: {v}" for k, v in sorted(shown.items())]
    lines += [
        "",
        "## Trials",
        "",
        f"{sum(counts.values())} trials: {', '.join(f'{v} {k.lower()}' for k, v in sorted(counts.items()))} "
        "(pruned: stopped early by ASHA). [trials.csv](trials.csv) names each trial as the progress lines do and "
        "gives its best epoch's value (`best_value`, what [history.png](history.png) shows and the confirmation "
        "ranks by) and its last epoch's (`last_value`); the study's own value (`study_value`, what optuna-dashboard "
        "shows) is the best epoch for a complete trial and the last epoch for a pruned one, which is Optuna's rule. "
        "[learning_curves.png](learning_curves.png) shows every epoch.",
    ]
    if failed:
        lines += ["", f"{len(failed)} trial{'s' if len(failed) > 1 else ''} failed:", ""]
        lines += [f"- `{name}`: {reason}" for name, reason in failed]
    lines += [
        "",
        "## Caveats",
        "",
        "- The split is random by track, stratified by genre: a track's clips and windows never cross splits, "
        "but an artist's tracks can. On GTZAN, whose tracks repeat artists (and a few recordings), that makes "
        "test accuracy higher than on unseen artists; an artist-filtered split is the stricter measure.",
        "- The candidates were chosen on validation among many trials, so their validation scores are optimistic; "
        "the test figures above are the ones to quote.",
        "",
        "## Next",
        "",
        "```",
        f"genre-sweep predict SONGS --model {cfg.root}/report/model",
        "python -c 'from transformers import pipeline; "
        f'print(pipeline("audio-classification", model="{cfg.root}/report/model", trust_remote_code=True)'
        '("song.wav"))\'',
        next_sweep(cfg, record),
        "```",
        "",
        "The first predicts songs with the exported model; the second uses it from Hugging Face transformers "
        'alone (a file path needs ffmpeg; `{"raw": array, "sampling_rate": sr}` does not); the third searches '
        "again with more trials, the same space ([space.yaml](space.yaml), this folder's copy of it) and the same "
        f"recorded settings. An interrupted sweep is finished with `--name {cfg.name} --resume`.",
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
