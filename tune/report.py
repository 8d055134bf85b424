"""The sweep report: the chosen configuration and its confirmation, its test result over the retrain seeds, every
trial, Optuna's own plots of the study, the learning curves, summary.md.

Everything is written to a local folder and then copied into the sweep's storage (local or s3://), where it
outlives the cluster. Every path the report's files name is relative to the report's folder
(``<storage>/<name>/report``): a trial's folder is ``../<trial>``, the study's copy ``optuna.db``, the space
``space.yaml``, the storage ``../..``; the dataset is named relative to it too when both are local, else by its
URI. ``write_report`` exports the model and uploads; ``write_report_files`` writes the rest from plain data.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import logging
import math
import os
import re
import statistics
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import optuna  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from optuna.trial import FrozenTrial, TrialState  # noqa: E402
from optuna.visualization import matplotlib as optuna_plots  # noqa: E402
from sklearn.metrics import confusion_matrix  # noqa: E402

from genre_sweep.data.shards import Dataset  # noqa: E402
from genre_sweep.model.card import (  # noqa: E402
    CardFacts,
    Result,
    wilson,  # noqa: E402
)
from genre_sweep.model.configs import score  # noqa: E402
from genre_sweep.model.evaluate import per_genre_scores, plot_confusion  # noqa: E402
from genre_sweep.model.export import export_model  # noqa: E402
from genre_sweep.store import StoreOptions, absolute, filesystem, is_s3, join, write_atomic, write_bytes  # noqa: E402
from genre_sweep.tune import ledger as costs  # noqa: E402
from genre_sweep.tune.configs import RetrainConfig  # noqa: E402
from genre_sweep.tune.confirm import Confirmation  # noqa: E402
from genre_sweep.tune.record import SweepRecord  # noqa: E402
from genre_sweep.tune.schedulers import USES  # noqa: E402
from genre_sweep.tune.study import SQLITE  # noqa: E402
from genre_sweep.tune.warm import known_lines, known_paths, own_trials, recipe_lines, trial_columns  # noqa: E402

log = logging.getLogger(__name__)

MIN_COMPLETE_FOR_IMPORTANCE = 6  # and two per searched hyperparameter
MIN_COMPLETE_FOR_PARAMS = 2  # parallel coordinates and slices: one complete trial shows no relation
TOP_K = 5  # trials in summary.md's table, and named in learning_curves.png's legend (the chosen one besides)
DPI = 120
# the entries of the report's JSON that may name a local path
PATH_KEYS = ("shards", "pretrained", "warm_start", "enqueue")
STUDY_COPY = "optuna.db"


@dataclasses.dataclass(frozen=True)
class ReportInput:
    """What the report is written from: the sweep's config and record, its study, the confirmation, the chosen
    configuration's test evaluations (``retrain.test_chosen``; its ``model`` is exported, not read here), the
    dataset's genres, and each failed trial's name and reason."""

    cfg: RetrainConfig
    record: SweepRecord
    study: optuna.Study
    confirmation: Confirmation
    tested: dict[str, Any]
    genres: list[str]
    failed: list[tuple[str, str]]


@dataclasses.dataclass(frozen=True)
class Plot:
    file: str
    caption: str


def write_report(
    cfg: RetrainConfig,
    record: SweepRecord,
    confirmation: Confirmation,
    tested: dict[str, Any],
    data: Dataset,
    failed: list[tuple[str, str]],
) -> None:
    """Write ``<storage>/<name>/report``: the exported model, the confirmation, test metrics, every trial, plots, a
    copy of the study and summary.md.

    ``tested`` is the chosen configuration's test evaluation (``retrain.test_chosen``: every seed's, and the
    exported seed's model), ``failed`` each failed trial's name and reason.
    """
    study = optuna.load_study(study_name=cfg.name, storage=cfg.study_url())
    inputs = ReportInput(cfg, record, study, confirmation, tested, list(data.genres), failed)
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report"
        report.mkdir()
        export_model(
            tested["model"],
            report / "model",
            data.genres,
            data.frames,
            data.mel_bins,
            base=cfg.pretrained,
            card=card_facts(inputs, data.frames, data.mel_bins),
        )
        write_report_files(report, inputs)
        upload(report, cfg.root + "/report", cfg.options)


def card_facts(inputs: ReportInput, frames: int, mel_bins: int) -> CardFacts:
    """What the exported model's card says: the exported seed's test figures with their intervals, the chosen
    configuration's mean over its seeds, the data and the searched values."""
    tested, cfg = inputs.tested, inputs.cfg
    exported = next(t for t in tested["test_evaluations"] if t["seed"] == tested["exported_seed"])
    clips, seeds = exported["clips"], len(tested["seeds"])
    this_seed = f"seed {tested['exported_seed']}, the exported one"
    results = [
        Result(
            "accuracy",
            "clip accuracy",
            exported["clip_acc"],
            "test",
            clips,
            this_seed,
            wilson(exported["clip_acc"], clips),
        ),
        Result("f1", "clip macro-F1", exported["clip_macro_f1"], "test", clips, this_seed),
    ]
    if seeds > 1:
        spread = f"mean of {seeds} seeds of this configuration, std {tested['test_clip_acc_std']:.3f}"
        results.append(Result("accuracy", "clip accuracy", tested["test_clip_acc_mean"], "test", clips, spread))
    return CardFacts(
        name=cfg.name,
        results=tuple(results),
        data=(
            f"{len(inputs.genres)} genres of clips prepared by `genre-sweep prepare` (log-mel fbank windows of "
            f"{frames} frames x {mel_bins} mel bins at 16 kHz), split by track into train, validation and test; "
            f"the test split was used once, for the configuration the sweep chose over {len(own_trials(inputs.study))} "
            "trials."
        ),
        fingerprint=inputs.record.dataset.get("fingerprint"),
        trained_with={**inputs.confirmation.chosen.params, "seed": tested["exported_seed"]},
        made_by="genre-sweep sweep",
    )


def write_report_files(report: Path, inputs: ReportInput) -> None:
    """Everything in the report but the model, written into the local folder ``report``."""
    cfg, record, study = inputs.cfg, inputs.record, inputs.study
    confirmation, tested = inputs.confirmation, inputs.tested
    place = Place.of(cfg)
    chosen = confirmation.chosen
    chosen_config = {k: v for k, v in confirmation.runs_of(chosen.trial)[0].config.items() if k != "seed"}
    pooled = pooled_test(tested, inputs.genres)
    accuracy = float(np.trace(pooled["confusion"]) / max(pooled["clips"], 1))
    seeds = len(pooled["seeds"])
    plot_confusion(
        np.array(pooled["confusion_normalised"]),
        inputs.genres,
        f"test: {seeds} seed{'s' if seeds > 1 else ''} x {pooled['clips'] // max(seeds, 1)} clips, pooled\n"
        f"rows normalised by true genre; clip accuracy {accuracy:.3f}",
        report / "confusion.png",
        values_format=".2f",
    )
    save_json(report / "test_metrics.json", test_metrics(tested, inputs.genres, pooled), place)
    save_json(report / "retrain.json", retrain_summary(tested, confirmation), place)
    save_json(
        report / "best_config.json",
        {
            "trial": chosen.trial,
            "folder": trial_folder(chosen.folder),
            "params": chosen.params,
            "config": chosen_config,
            "seeds": tested["seeds"],
            "search": {"metric": cfg.metric, "mode": cfg.direction, "value": chosen.value, "epoch": chosen.epoch},
            "confirmation": {"mean": confirmation.mean(chosen.trial), "std": confirmation.std(chosen.trial)},
        },
        place,
    )
    write_atomic(report / "sweep_record.json", record_copy(record, place))
    write_atomic(report / "space.yaml", record.search_space.as_yaml())
    rows = [
        {**r, "fail_reason": place.text(r["fail_reason"]), **known_paths(r, place.path)}
        for r in trials_table(study, cfg.direction)
    ]
    spent = costs.load(costs.ledger_uri(cfg.root), cfg.options)  # each trial's cost (tune/ledger.py)
    write_csv(costs.trial_columns(rows, spent, cfg.gpu_hour_price), report / "trials.csv")
    plots, notes = write_plots(report, study, cfg.metric, cfg.direction, chosen.trial, asha_rungs(record.settings))
    save_study(study, report / STUDY_COPY, place)
    files = ["best_config.json", "trials.csv", "retrain.json", "test_metrics.json", "confusion.png"]
    files += [p.file for p in plots] + ["sweep_record.json", "space.yaml", STUDY_COPY, "model/"]
    summary = summary_markdown(inputs, pooled, plots, notes, files, chosen_config)
    write_atomic(report / "summary.md", summary)


@dataclasses.dataclass(frozen=True)
class Place:
    """Where the report lands, so that the paths it names are relative to it: ``folder`` is the report's folder on
    this machine (None with S3 storage, where only the sweep's own folders can be named relative to it)."""

    folder: Path | None

    @classmethod
    def of(cls, cfg: RetrainConfig) -> Place:
        return cls(None if is_s3(cfg.storage) else Path(absolute(cfg.root)) / "report")

    def path(self, path: str) -> str:
        """``path`` as the report names it: relative to the report's folder when both are local; else as given (an
        s3:// URI, a model's name)."""
        if self.folder is None or is_s3(path) or not Path(path).is_absolute():
            return path
        return os.path.relpath(path, self.folder)

    def storage(self, cfg: RetrainConfig) -> str:
        """The sweep's storage as the report's commands name it (``../..`` when local)."""
        return cfg.storage if self.folder is None else self.path(absolute(cfg.storage))

    def text(self, text: str) -> str:
        """Free text (a failure's reason) with the sweep's local folders named relative to the report's folder."""
        if self.folder is None:
            return text
        for local, relative in ((self.folder, "."), (self.folder.parent, ".."), (self.folder.parent.parent, "../..")):
            text = re.sub(re.escape(str(local)) + r"(?=/|$|[\s'\"),:;])", relative, text)
        return text


def trial_folder(folder: str) -> str:
    """A trial's folder as the report names it: a trial's folder is ``<storage>/<name>/<trial>``, beside the
    report's."""
    return f"../{PurePosixPath(folder).name}"


def named_paths(value: Any, place: Place) -> Any:
    """``value`` (JSON-like) with each path it names (a ``PATH_KEYS`` entry) as the report names it."""
    if isinstance(value, dict):
        return {
            k: place.path(v) if k in PATH_KEYS and isinstance(v, str) else named_paths(v, place)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [named_paths(v, place) for v in value]
    return value


def record_copy(record: SweepRecord, place: Place) -> bytes:
    """The sweep record as the report keeps it: its paths relative to the report's folder, and a SQLite study named
    by the report's copy of it (a server's URL, its password hidden, is kept). ``../genre-sweep.json`` is the
    record itself."""
    raw = json.loads(record.as_json())
    if raw["study_url"].startswith(SQLITE):
        raw["study_url"] = SQLITE + STUDY_COPY
    return json.dumps(named_paths(raw, place), indent=2).encode()


def pooled_test(tested: dict[str, Any], genres: list[str]) -> dict[str, Any]:
    """The chosen configuration's test predictions of every retrain seed, pooled: the summed confusion matrix
    (counts, and normalised by true genre: rows sum to 1) and scikit-learn's per-genre precision, recall, F1 and
    support (each clip counted once per seed)."""
    evaluations = tested["test_evaluations"]
    true = np.concatenate([np.asarray(e["clip_true"], np.int64) for e in evaluations])
    pred = np.concatenate([np.asarray(e["clip_pred"], np.int64) for e in evaluations])
    labels = list(range(len(genres)))
    per_genre = per_genre_scores(true, pred, genres)
    return {
        "seeds": [e["seed"] for e in evaluations],
        "clips": len(true),
        "confusion": confusion_matrix(true, pred, labels=labels).tolist(),
        "confusion_normalised": confusion_matrix(true, pred, labels=labels, normalize="true").tolist(),
        "per_genre": per_genre,
        "macro": {m: statistics.fmean(s[m] for s in per_genre.values()) for m in ("precision", "recall", "f1")},
    }


def test_metrics(tested: dict[str, Any], genres: list[str], pooled: dict[str, Any]) -> dict[str, Any]:
    """test_metrics.json: the seeds' test predictions pooled, and each seed's evaluation (its confusion in counts)."""
    per_seed = [{k: v for k, v in e.items() if k not in ("clip_true", "clip_pred")} for e in tested["test_evaluations"]]
    return {"genres": genres, "exported_seed": tested["exported_seed"], "pooled": pooled, "per_seed": per_seed}


def retrain_summary(tested: dict[str, Any], confirmation: Confirmation) -> dict[str, Any]:
    """retrain.json: the chosen configuration's test figures, and every retrain of the confirmation."""
    return {
        **{k: v for k, v in tested.items() if k not in ("model", "test_evaluations")},
        "confirmation": {
            "metric": confirmation.metric,
            "mode": confirmation.mode,
            "seconds": confirmation.seconds,
            "val_clips": confirmation.val_clips,
            "chosen": confirmation.chosen.trial,
            "candidates": [
                {
                    **dataclasses.asdict(c),
                    "folder": trial_folder(c.folder),
                    "mean": confirmation.mean(c.trial),
                    "std": confirmation.std(c.trial),
                    "within_noise": c in confirmation.within_noise(),
                }
                for c in confirmation.candidates
            ],
            "runs": [dataclasses.asdict(r) for r in confirmation.runs],
            "recipe": confirmation.versus_recipe(),  # the chosen configuration against the recipe's (tune.warm)
        },
    }


def save_study(study: optuna.Study, path: Path, place: Place) -> None:
    """A SQLite copy of ``study`` at ``path``, each trial's ``folder`` (and the sweep's folders in a failure's
    reason) named relative to the report's folder: the study for optuna-dashboard once the cluster (and a study on
    its head) is gone."""
    storage = optuna.storages.RDBStorage(f"{SQLITE}{path}")
    try:
        copy = optuna.create_study(storage=storage, study_name=study.study_name, directions=study.directions)
        for key, value in study.user_attrs.items():
            copy.set_user_attr(key, value)
        if study.metric_names:
            with quiet_experimental():
                copy.set_metric_names(study.metric_names)
        trials = study.get_trials(deepcopy=True)
        for t in trials:
            for key, value in t.user_attrs.items():
                if isinstance(value, str):
                    t.set_user_attr(key, trial_folder(value) if key == "folder" else place.text(value))
        copy.add_trials(trials)
    finally:
        storage.engine.dispose()


def best_and_last(trial: FrozenTrial, mode: str) -> tuple[Any, Any, Any, Any]:
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
    "recipe",
    "enqueued",
    "warm_start",
    "warm_trial",
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
                **trial_columns(t),  # the recipe, an --enqueue entry, or a --warm-start trial (tune.warm)
                **{f"param_{k}": v for k, v in t.params.items()},
            }
        )
    return rows


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    first = [k for k in TABLE_FIRST if any(k in r for r in rows)]
    fields = first + sorted({k for r in rows for k in r} - set(first))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


# --- plots -------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def quiet_experimental() -> Iterator[None]:
    """Optuna's matplotlib plots and metric names are experimental, and warn so on each call."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def optuna_plot(plot: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """An Optuna matplotlib plot's axes, without its warning that it is experimental."""
    with quiet_experimental():
        return plot(*args, **kwargs)


@contextlib.contextmanager
def optuna_style() -> Iterator[None]:
    """Optuna's plots switch matplotlib to its ggplot style for good: kept to them; and a hyperparameter all complete
    trials share draws on an axis of no width, which matplotlib widens, and says so: not a warning here."""
    with warnings.catch_warnings(), matplotlib.rc_context():
        warnings.filterwarnings("ignore", message="Attempting to set identical", category=UserWarning)
        yield


def write_plots(
    report: Path, study: optuna.Study, metric: str, mode: str, chosen: str, rungs: list[float]
) -> tuple[list[Plot], list[str]]:
    """Each plot as a PNG in ``report`` with its caption; a plot the study is too small for is left out, with a note
    saying why instead of a meaningless picture."""
    better = "higher" if mode == "max" else "lower"
    drawings: list[tuple[str, str, Callable[[], Figure | str]]] = [
        (
            "history.png",
            f"Optuna's optimisation history: each complete trial's {metric} at its best epoch ({better} is better) "
            "and the best so far; pruned trials (grey x) at their best epoch; the chosen one circled.",
            lambda: history_figure(study, metric, mode, chosen),
        ),
        (
            "learning_curves.png",
            f"Every trial's validation {metric} per epoch: the chosen trial in black and the search's next best in "
            "colour, named in the legend; other complete trials thin blue, pruned ones grey and dashed (x where the "
            "scheduler stopped them), failed ones red. Each trial is shifted a little along the epochs so that equal "
            "curves stay apart; dotted lines are ASHA's rungs (with --scheduler asha or hyperband).",
            lambda: learning_curves_figure(trial_curves(study), metric, mode, chosen, rungs),
        ),
        (
            "intermediate_values.png",
            f"Optuna's intermediate values: the {metric} each trial reported to the study per epoch, named by the "
            "study's number, and ASHA's rungs (dotted), the epochs where it compared trials and stopped the worse "
            "(learning_curves.png tells the trials apart).",
            lambda: intermediate_values_figure(study, metric, rungs),
        ),
        (
            "parallel_coordinate.png",
            "Optuna's parallel coordinates: each complete trial's searched values, coloured by its objective.",
            lambda: parallel_coordinate_figure(study, metric),
        ),
        (
            "slice.png",
            "Optuna's slice plot: the objective of each complete trial against each searched value.",
            lambda: slice_figure(study, metric),
        ),
        (
            "importances.png",
            "Optuna's hyperparameter importances (fANOVA): how much of the objective's variation each searched "
            "value explains, over the complete trials.",
            lambda: importances_figure(study, metric),
        ),
    ]
    plots, notes = [], []
    for file, caption, draw in drawings:
        with optuna_style():
            try:
                drawn = draw()
                if not isinstance(drawn, str):
                    save_figure(drawn, report / file)
            except Exception as e:  # a plot must not cost the sweep its report: left out, and said why
                log.warning("report: %s could not be drawn", file, exc_info=True)
                plt.close("all")
                drawn = f"it could not be drawn ({type(e).__name__}: {e})"
        if isinstance(drawn, str):
            notes.append(f"no {file}: {drawn}")
        else:
            plots.append(Plot(file, caption))
    return plots, notes


def save_figure(fig: Figure, path: Path) -> None:
    fig.savefig(path, dpi=DPI, bbox_inches="tight")  # a legend outside the axes is kept in
    plt.close(fig)


def legend_outside(ax: Axes, **kwargs: Any) -> None:
    """The legend to the right of the axes, where it covers no point."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=8, **kwargs)


def complete_trials(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def too_few_for_params(study: optuna.Study) -> str | None:
    """Why the complete trials cannot show how the objective varies with the searched values; None when they can."""
    complete = complete_trials(study)
    if len(complete) < MIN_COMPLETE_FOR_PARAMS:
        return (
            f"{len(complete)} complete trial{'s' if len(complete) != 1 else ''} cannot show how the objective varies "
            f"with the searched values (at least {MIN_COMPLETE_FOR_PARAMS} needed; pruned trials have no final score)"
        )
    if not {name for t in complete for name in t.params}:
        return "the space searches no hyperparameter"
    return None


def first_axes(axes: Axes | np.ndarray) -> Axes:
    """The first of the axes an Optuna plot returns (one, or an array with a subplot per hyperparameter)."""
    return np.atleast_1d(axes).ravel()[0]


def trial_named(study: optuna.Study, name: str) -> FrozenTrial | None:
    return next((t for t in study.trials if t.user_attrs.get("trial") == name), None)


def history_figure(study: optuna.Study, metric: str, mode: str, chosen: str) -> Figure | str:
    """Optuna's optimisation history, with the pruned trials at their best epoch and the chosen trial marked."""
    if not complete_trials(study):
        return "no trial completed, so the objective has no history (pruned trials have no final score)"
    ax = optuna_plot(optuna_plots.plot_optimization_history, study, target_name=f"{metric} (best epoch)")
    pruned = [(t.number, best_and_last(t, mode)[0]) for t in study.trials if t.state == TrialState.PRUNED]
    pruned = [(n, v) for n, v in pruned if v is not None and math.isfinite(v)]
    if pruned:
        numbers, values = zip(*pruned, strict=True)
        ax.scatter(numbers, values, color="0.5", marker="x", s=24, label="pruned trial (its best epoch)", zorder=3)
    t = trial_named(study, chosen)
    best = best_and_last(t, mode)[0] if t is not None else None
    if t is not None and best is not None:
        ax.scatter(  # hollow: the trial's own point stays visible inside
            [t.number],
            [best],
            marker="o",
            s=160,
            facecolors="none",
            edgecolors="black",
            linewidths=1.5,
            zorder=4,
            label=f"chosen: {chosen} (confirmed over seeds)",
        )
    ax.set_title(f"optimisation history ({'higher' if mode == 'max' else 'lower'} is better)")
    ax.set_xlabel("trial (the study's number: trials.csv names each)")
    ax.figure.set_size_inches(max(8.0, 0.12 * len(study.trials) + 5), 4.8)
    legend_outside(ax)
    return ax.figure


@dataclasses.dataclass(frozen=True)
class Curve:
    """A trial's validation metric per epoch, as reported to the study."""

    name: str
    state: str  # COMPLETE, PRUNED, FAIL (or RUNNING)
    epochs: list[int]
    values: list[float]


def trial_curves(study: optuna.Study) -> list[Curve]:
    """Each trial's per-epoch values as the study holds them (the searcher reports every epoch), in the study's
    order; trials that reported none are left out."""
    curves = []
    for t in own_trials(study):  # not --warm-start's (tune.warm)
        epochs = sorted(t.intermediate_values)
        if epochs:
            name = t.user_attrs.get("trial", str(t.number))
            curves.append(Curve(name, t.state.name, epochs, [t.intermediate_values[e] for e in epochs]))
    return curves


CURVE_STYLES: dict[str, dict[str, Any]] = {  # the trials not named in the legend, by how they ended
    "COMPLETE": {"color": "tab:blue", "linewidth": 0.8, "alpha": 0.45, "zorder": 2},
    "PRUNED": {"color": "0.55", "linewidth": 0.8, "alpha": 0.6, "linestyle": "--", "zorder": 1},
    "FAIL": {"color": "tab:red", "linewidth": 0.8, "alpha": 0.6, "linestyle": ":", "zorder": 1},
}
GROUPS = {"COMPLETE": "other complete trials", "PRUNED": "pruned (x: where)", "FAIL": "failed"}
JITTER = 0.3  # the spread of the trials' shifts along the epochs


def curve_style(curve: Curve, chosen: str, named: list[str], rank: dict[str, int], mode: str) -> dict[str, Any]:
    """How a trial's curve is drawn, and its legend entry (``label``, one per group) and place there (``order``):
    the chosen trial black and thick, the named ones in colour, the others thin by how they ended."""
    best = max(curve.values, key=lambda v: score(v, mode))
    said = f"best {best:.3f}{', pruned' if curve.state == 'PRUNED' else ''}"
    if curve.name == chosen:
        label = f"chosen: {curve.name} ({said})"
        return {"color": "black", "linewidth": 2.4, "zorder": 5, "marker": "o", "label": label, "order": 0}
    if curve.name in named:
        color = plt.get_cmap("tab10")(named.index(curve.name) % 10)
        label = f"#{rank[curve.name]} {curve.name} ({said})"
        return {"color": color, "linewidth": 1.6, "zorder": 4, "marker": "o", "label": label, "order": rank[curve.name]}
    state = curve.state if curve.state in CURVE_STYLES else "FAIL"
    order = len(rank) + 1 + list(CURVE_STYLES).index(state)
    return {**CURVE_STYLES[state], "marker": ".", "label": GROUPS[state], "order": order}


def learning_curves_figure(
    curves: list[Curve], metric: str, mode: str, chosen: str, rungs: list[float], top: int = TOP_K
) -> Figure | str:
    """Every trial's curve, readable with many trials: the chosen one and the best ``top - 1`` others named, the
    rest thin and grouped by how they ended, each trial shifted a little along the epochs (equal curves stay
    apart), ASHA's rungs dotted, the legend outside the axes."""
    if not curves:
        return "no trial reported an epoch to the study"
    ranked = sorted(curves, key=lambda c: -max(score(v, mode) for v in c.values))
    rank = {c.name: i + 1 for i, c in enumerate(ranked)}
    named = [c.name for c in ranked if c.name != chosen][: max(top - 1, 0)]
    fig, ax = plt.subplots(figsize=(10, 5))
    entries: dict[str, tuple[int, Any]] = {}  # legend label: (its place, a line drawn so)
    for i, curve in enumerate(curves):
        shift = JITTER * (i / max(len(curves) - 1, 1) - 0.5)
        x = [e + shift for e in curve.epochs]
        style = curve_style(curve, chosen, named, rank, mode)
        label, order = style.pop("label"), style.pop("order")
        (line,) = ax.plot(x, curve.values, markersize=3, **style)
        if curve.state == "PRUNED":  # where ASHA stopped it
            ax.plot(x[-1], curve.values[-1], marker="x", markersize=6, color=style["color"], zorder=style["zorder"])
        entries.setdefault(label, (order, line))
    rung = mark_rungs(ax, rungs)
    if rung is not None:
        entries["ASHA's rungs"] = (len(rank) + len(CURVE_STYLES) + 1, rung)
    labels = sorted(entries, key=lambda label: entries[label][0])
    ax.legend(
        [entries[label][1] for label in labels],
        labels,
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        borderaxespad=0.0,
        fontsize=8,
    )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(f"epoch (each trial shifted by up to ±{JITTER / 2:g} so that equal curves stay apart)")
    ax.set_ylabel(metric)
    ax.set_title(f"learning curves of {len(curves)} trials ({'higher' if mode == 'max' else 'lower'} is better)")
    return fig


def mark_rungs(ax: Axes, rungs: list[float]) -> Any:
    """ASHA's rungs as dotted vertical lines; the first, for a legend entry (None without rungs)."""
    lines = [ax.axvline(rung, color="black", linestyle=":", linewidth=1.2, alpha=0.7, zorder=1) for rung in rungs]
    return lines[0] if lines else None


def intermediate_values_figure(study: optuna.Study, metric: str, rungs: list[float]) -> Figure | str:
    """Optuna's intermediate values (every epoch each trial reported), with ASHA's rungs."""
    reported = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    if not any(t.intermediate_values for t in reported):
        return "no complete or pruned trial reported an epoch to the study"
    ax = optuna_plot(optuna_plots.plot_intermediate_values, study)
    rung = mark_rungs(ax, rungs)
    if rung is not None:
        rung.set_label("ASHA's rungs")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch (Optuna's step)")
    ax.set_ylabel(metric)
    ax.set_title(f"intermediate values: each trial's {metric} per epoch")
    ax.figure.set_size_inches(10, 5)
    legend_outside(ax, ncol=1 + len(reported) // 25)
    return ax.figure


def parallel_coordinate_figure(study: optuna.Study, metric: str) -> Figure | str:
    why = too_few_for_params(study)
    if why:
        return why
    ax = optuna_plot(optuna_plots.plot_parallel_coordinate, study, target_name=metric)
    searched = {name for t in complete_trials(study) for name in t.params}
    ax.figure.set_size_inches(max(8.0, 1.4 * (len(searched) + 1)), 5)
    return ax.figure


def slice_figure(study: optuna.Study, metric: str) -> Figure | str:
    why = too_few_for_params(study)
    if why:
        return why
    return first_axes(optuna_plot(optuna_plots.plot_slice, study, target_name=metric)).figure


def importances_figure(study: optuna.Study, metric: str) -> Figure | str:
    """fANOVA importances (seeded: the same study gives the same picture), once the complete trials are enough."""
    complete = complete_trials(study)
    searched = {name for t in complete for name in t.params}
    needed = max(MIN_COMPLETE_FOR_IMPORTANCE, 2 * len(searched))
    if len(complete) < needed:
        return (
            f"{len(complete)} complete trials are too few to attribute the score to {len(searched)} hyperparameters "
            f"(fANOVA here wants at least {needed}); run more trials"
        )
    try:
        ax = optuna_plot(
            optuna_plots.plot_param_importances,
            study,
            evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0),
            target_name=metric,
        )
    except (RuntimeError, ValueError) as e:  # e.g. every complete trial scored the same: nothing to attribute
        plt.close("all")
        return f"fANOVA could not be computed: {e}"
    if ax.get_legend() is not None:
        ax.get_legend().remove()  # one objective: its name is in the title
    ax.set_title(f"importances for {metric} (fANOVA, {len(complete)} complete trials)", loc="left")
    ax.figure.set_size_inches(8, 0.45 * len(searched) + 1.8)
    return ax.figure


def asha_rungs(settings: dict[str, Any]) -> list[float]:
    """The epochs where ASHA compared trials: Ray's one bracket, grace period x reduction factor^k up to max_t (as
    ``ray.tune.schedulers.async_hyperband._Bracket`` counts them; Hyperband's later brackets use some of the same);
    none when the settings lack them, or the sweep's scheduler has no rungs (median, none)."""
    grace, factor, most = settings.get("grace_period"), settings.get("reduction_factor"), settings.get("max_t")
    if settings.get("scheduler", "asha") not in ("asha", "hyperband") or not (grace and factor and most) or factor <= 1:
        return []
    count = int(np.log(most / grace) / np.log(factor) + 1)
    return [grace * factor**k for k in range(count)]


# --- summary.md --------------------------------------------------------------------------------------------------


def summary_markdown(
    inputs: ReportInput,
    pooled: dict[str, Any],
    plots: list[Plot],
    notes: list[str],
    files: list[str],
    config: dict[str, Any],
) -> str:
    """The report's front page: the chosen configuration and how it was chosen, its test result with its
    uncertainty and per genre, the trials (the top ones, failed ones with why), the plots (or why not), the
    caveats, what to run next. Every path in it is relative to the report's folder."""
    cfg, confirmation = inputs.cfg, inputs.confirmation
    lines = [f"# Sweep `{cfg.name}`", ""]
    lines += result_lines(confirmation, inputs.tested)
    lines += per_genre_lines(pooled)
    lines += confirmation_lines(cfg, confirmation, inputs.tested)
    lines += configuration_lines(confirmation, config)
    lines += trials_lines(inputs)
    spent = costs.load(costs.ledger_uri(cfg.root), cfg.options)  # the stop rule that ended the search, the costs
    lines += costs.stop_lines(spent) + costs.cost_lines(spent, cfg.gpu_hour_price)
    lines += plot_lines(plots, notes)
    lines += [
        "## Caveats",
        "",
        "- The split is random by track, stratified by genre: a track's clips and windows never cross splits, "
        "but an artist's tracks can. On GTZAN, whose tracks repeat artists (and a few recordings), that makes "
        "test accuracy higher than on unseen artists; an artist-filtered split is the stricter measure.",
        "- The candidates were chosen on validation among many trials, so their validation scores are optimistic; "
        "the test figures above are the ones to quote.",
        "",
    ]
    lines += next_lines(cfg, inputs.record)
    lines += ["## Files", "", *[f"- [{f}]({f})" for f in files]]
    return "\n".join(lines) + "\n"


def result_lines(confirmation: Confirmation, tested: dict[str, Any]) -> list[str]:
    chosen, metric = confirmation.chosen, confirmation.metric
    seeds = len(tested["seeds"])
    better = "higher" if confirmation.mode == "max" else "lower"
    if len(confirmation.candidates) > 1:
        how = (
            f"the best mean validation {metric} ({better} is better) over {seeds} seed{'s' if seeds > 1 else ''} "
            f"among the {len(confirmation.candidates)} confirmed (see Confirmation)"
        )
    else:
        how = (
            f"the search's best by its best epoch's validation {metric} ({better} is better), retrained with "
            f"{seeds} seed{'s' if seeds > 1 else ''} (--confirm-top 1: not compared with the runners-up)"
        )
    n = tested["test_clips"]
    low, high = wilson(tested["test_clip_acc_mean"], n)
    spread = tested["test_clip_acc_std"]
    compared = (
        "beside which the spread over seeds is unknown with one seed"
        if seeds < 2
        else f"{'larger' if (high - low) / 2 > spread else 'no larger'} than the spread over seeds (std {spread:.3f})"
    )
    return [
        "## Result",
        "",
        f"The chosen configuration is trial `{chosen.trial}`'s: {how}. It alone was tested:",
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
    ]


def per_genre_lines(pooled: dict[str, Any]) -> list[str]:
    seeds, clips = len(pooled["seeds"]), pooled["clips"]
    lines = [
        "### Per genre",
        "",
        f"The test predictions of all {seeds} seed{'s' if seeds > 1 else ''} pooled ({clips // max(seeds, 1)} clips x "
        f"{seeds} = {clips} predictions; a genre's support counts each of its clips once per seed), scored by "
        "scikit-learn (`precision_recall_fscore_support`); [confusion.png](confusion.png) is their confusion matrix, "
        "each row normalised by its true genre, and [test_metrics.json](test_metrics.json) holds it in counts, with "
        "each seed's own.",
        "",
        "| genre | precision | recall | F1 | support |",
        "|---|---|---|---|---|",
    ]
    for genre, s in pooled["per_genre"].items():
        lines.append(f"| {genre} | {s['precision']:.3f} | {s['recall']:.3f} | {s['f1']:.3f} | {s['support']} |")
    macro = pooled["macro"]
    lines += [f"| *macro mean* | {macro['precision']:.3f} | {macro['recall']:.3f} | {macro['f1']:.3f} | {clips} |", ""]
    return lines


def confirmation_lines(cfg: RetrainConfig, confirmation: Confirmation, tested: dict[str, Any]) -> list[str]:
    chosen, metric = confirmation.chosen, confirmation.metric
    seeds = len(tested["seeds"])
    best = sum(c.recipe != "added" for c in confirmation.candidates)  # the recipe's, when not among them (tune.warm)
    recipe = " and the recipe's" if any(c.recipe == "added" for c in confirmation.candidates) else ""
    lines = [
        "## Confirmation",
        "",
        f"The search's best {best} configurations (by their best epoch's validation {metric}){recipe}, "
        f"each retrained with seeds {', '.join(map(str, tested['seeds']))} from the sweep record's trial template:",
        "",
        f"| | trial | search: {metric} (epoch) | retrained: mean ± std | per seed |",
        "|---|---|---|---|---|",
    ]
    tied = confirmation.within_noise()
    for c in confirmation.candidates:
        mark = "**chosen**" if c is chosen else ("within noise" if c in tied else "")
        mark += (", " if mark else "") + "recipe" if c.recipe else ""  # the train job's defaults (tune.warm)
        per_seed = ", ".join(f"{v:.3f}" for v in confirmation.values(c.trial))
        lines.append(
            f"| {mark} | `{c.trial}` | {c.value:.4f} ({c.epoch}) | {confirmation.mean(c.trial):.4f} ± "
            f"{confirmation.std(c.trial):.4f} | {per_seed} |"
        )
    return lines + [
        "",
        confirmation.verdict(),
        "",
        *recipe_lines(confirmation),
        f"Cost: {len(confirmation.candidates)} configurations x {seeds} seeds = {len(confirmation.runs)} retrains in "
        f"{confirmation.seconds:.1f} s of wall time (each on a trial's resources: {cfg.cpus_per_trial:g} CPU + "
        f"{cfg.gpus_per_trial:g} GPU, as many at once as the cluster holds), then the chosen one's {seeds} tests.",
        "",
    ]


def configuration_lines(confirmation: Confirmation, config: dict[str, Any]) -> list[str]:
    chosen = confirmation.chosen
    shown = {k: f"{v:.4g}" if isinstance(v, float) else v for k, v in config.items()}  # in full in best_config.json
    return [
        "## Configuration",
        "",
        f"Trial `{chosen.trial}`'s searched values (**bold**) on the sweep record's template "
        "([best_config.json](best_config.json), [sweep_record.json](sweep_record.json)):",
        "",
        *[f"- `{k}`: **{v}**" if k in chosen.params else f"- `{k}`: {v}" for k, v in sorted(shown.items())],
        "",
    ]


def trials_lines(inputs: ReportInput) -> list[str]:
    counts: dict[str, int] = {}
    for t in own_trials(inputs.study):  # --warm-start's are said apart (tune.warm)
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    lines = [
        "## Trials",
        "",
        f"{sum(counts.values())} trials: {', '.join(f'{v} {k.lower()}' for k, v in sorted(counts.items()))} "
        "(pruned: stopped early by the sweep's scheduler, or by a stop rule: see Cost). [trials.csv](trials.csv) "
        "names each trial as the progress "
        "lines do, with its study `number` (how Optuna's plots and optuna-dashboard name it), its best epoch's value "
        "(`best_value`, what the confirmation ranks by) and its last epoch's (`last_value`); the study's own value "
        "(`study_value`) is the best epoch for a complete trial and the last epoch for a pruned one, which is "
        "Optuna's rule.",
        "",
    ]
    lines += known_lines(inputs.study, Place.of(inputs.cfg).path)
    lines += top_trials_lines(inputs)
    if inputs.failed:
        place = Place.of(inputs.cfg)
        lines += [f"{len(inputs.failed)} trial{'s' if len(inputs.failed) > 1 else ''} failed:", ""]
        lines += [f"- `{name}`: {place.text(reason)}" for name, reason in inputs.failed] + [""]
    return lines


def top_trials_lines(inputs: ReportInput, k: int = TOP_K) -> list[str]:
    """The search's best ``k`` trials by their best epoch (as the confirmation ranks them), with their searched
    values and what the confirmation made of them."""
    mode, confirmation = inputs.cfg.direction, inputs.confirmation
    scored = [(t, *best_and_last(t, mode)[:2]) for t in own_trials(inputs.study)]
    scored = [(t, v, e) for t, v, e in scored if v is not None and math.isfinite(v)]
    top = sorted(scored, key=lambda s: -score(s[1], mode))[:k]
    if not top:
        return []
    params = sorted({name for t, _, _ in top for name in t.params})
    candidates = {c.trial for c in confirmation.candidates}
    lines = [
        f"The top {len(top)} by their best epoch's {confirmation.metric}:",
        "",
        f"| | trial | number | {confirmation.metric} (epoch) | state | epochs run | "
        + " | ".join(f"`{p}`" for p in params)
        + " |",
        "|---" * (6 + len(params)) + "|",
    ]
    for t, value, epoch in top:
        name = t.user_attrs.get("trial", "")
        mark = "**chosen**" if name == confirmation.chosen.trial else ("confirmed" if name in candidates else "")
        mark += (", " if mark else "") + "recipe" if t.user_attrs.get("recipe") else ""
        values = [format_value(t.params[p]) if p in t.params else "" for p in params]
        lines.append(
            f"| {mark} | `{name}` | {t.number} | {value:.4f} ({epoch}) | {t.state.name.lower()} | "
            f"{len(t.intermediate_values)} | " + " | ".join(values) + " |"
        )
    return lines + [""]


def format_value(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def plot_lines(plots: list[Plot], notes: list[str]) -> list[str]:
    lines = ["## Plots", ""]
    for p in plots:
        lines += [f"![{Path(p.file).stem}]({p.file})", "", p.caption, ""]
    if notes:
        lines += ["Left out:", "", *[f"- {n}" for n in notes], ""]
    return lines


def next_sweep(cfg: RetrainConfig, record: SweepRecord) -> str:
    """The command of a larger sweep of the same space (``space.yaml``: the report's copy of the record's space),
    objective, model and settings, run in the report's folder: its paths are relative to it."""
    place = Place.of(cfg)
    # what this sweep started from is not the next one's: it starts from this sweep's trials (--warm-start)
    left_out = ("trials", "max_concurrent_trials", "warm_start", "enqueue", "recipe_trial")
    scheduler = record.settings.get("scheduler") or "asha"
    unread = {k for k, users in USES.items() if scheduler not in users}  # refused with that scheduler
    settings = {k: v for k, v in record.settings.items() if k not in left_out and k not in unread}
    settings = named_paths(settings, place)  # a --pretrained checkpoint's folder, say
    flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in settings.items() if v is not None)
    trials = 2 * int(record.settings.get("trials") or 35)
    shards = place.path(cfg.shards or record.dataset["shards"])
    return (
        f"genre-sweep sweep --shards {shards} --storage {place.storage(cfg)} --name {cfg.name}-more "
        f"--trials {trials} --space space.yaml --warm-start {place.path(absolute(cfg.root))} {flags}"
    )


def next_lines(cfg: RetrainConfig, record: SweepRecord) -> list[str]:
    where = "this folder" if not is_s3(cfg.storage) else f"a local copy of this folder ({cfg.root}/report)"
    return [
        "## Next",
        "",
        f"In {where}, as every path in this report is relative to it:",
        "",
        "```",
        "genre-sweep predict SONGS --model model",
        "python -c 'from transformers import pipeline; "
        'print(pipeline("audio-classification", model="./model", trust_remote_code=True)'
        '("song.wav"))\'',
        next_sweep(cfg, record),
        f"optuna-dashboard {SQLITE}{STUDY_COPY}",
        "```",
        "",
        "The first predicts songs with the exported model; the second names a song's genre by the same windows' "
        "vote from Hugging Face transformers alone, with the folder's own pipeline (see model/README.md); the "
        "third searches "
        "again with more trials, the same space ([space.yaml](space.yaml), this folder's copy of the record's, "
        "which `--space` reads back to the same space) and the same recorded settings, beside this sweep; the "
        f"fourth opens this folder's copy of the study. An interrupted sweep is finished with `--name {cfg.name} "
        "--resume`.",
        "",
    ]


def upload(local: Path, uri: str, options: StoreOptions) -> None:
    """Copy a local folder's files to ``uri`` (local folder or s3://)."""
    fs, root = filesystem(uri, options)
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        write_bytes(fs, join(root, str(path.relative_to(local))), path.read_bytes())


def save_json(path: Path, value: Any, place: Place) -> None:
    """``value`` as JSON, the paths it names relative to the report's folder."""
    write_atomic(path, json.dumps(named_paths(value, place), indent=2, sort_keys=True, default=str))
