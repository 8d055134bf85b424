"""The sweep report from a real Optuna study and plain test evaluations: Optuna's plots (or why not), the learning
curves, the pooled confusion matrix and per-genre scores, the top trials, paths relative to the report's folder,
and a next sweep of the same space."""

import csv
import dataclasses
import json
import shlex
from pathlib import Path

import matplotlib.image
import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from genre_sweep.config import resolve
from genre_sweep.data.shards import Dataset
from genre_sweep.tune.configs import RetrainConfig, SweepConfig
from genre_sweep.tune.confirm import Candidate, Confirmation, Run
from genre_sweep.tune.record import SweepRecord, make_record, new_sweep, reconcile
from genre_sweep.tune.report import (
    Curve,
    ReportInput,
    asha_rungs,
    history_figure,
    learning_curves_figure,
    next_sweep,
    write_report_files,
)
from genre_sweep.tune.space import load_space

GENRES = ["blues", "metal", "reggae"]
MANIFEST = {"config": {"frames": 256}, "sources": {"fingerprint": "abc"}, "features": {}, "shards": [], "genres": []}
SPACE = (
    "space:\n"
    "  learning_rate: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n"
    "  classifier_hidden_layer_size: {type: categorical, choices: [100, 200]}\n"
    "  num_train_epochs: null\n  batch_size: null\n  warmup_ratio: null\n  weight_decay: null\n"
    "  encoder_min_layer_to_update: null\n  encoder_update_rank: null\n  encoder_update_alpha: null\n"
    "fixed:\n  num_train_epochs: 4\n"
)


class Sweep:
    """A sweep's config, record and real SQLite study (where a local sweep keeps it), its trials named and told
    as the searcher tells them: complete with every epoch, pruned early, failed."""

    def __init__(self, tmp_path: Path, space: str = SPACE):
        self.storage, self.shards = tmp_path / "sweeps", tmp_path / "shards"
        (tmp_path / "space.yaml").write_text(space)
        flags = {"storage": str(self.storage), "name": "s1", "shards": str(self.shards), "pretrained": "tiny"}
        sweep_cfg, loaded = new_sweep(resolve(SweepConfig, {**flags, "space": str(tmp_path / "space.yaml")}))
        self.root = self.storage / "s1"
        self.root.mkdir(parents=True)
        url = f"sqlite:///{self.root / 'optuna.db'}"
        record = make_record(sweep_cfg, loaded, Dataset(str(self.shards), MANIFEST), url)
        self.record = SweepRecord(
            **{k: v for k, v in json.loads(record.as_json()).items() if k not in ("written_by", "format")}
        )
        data = Dataset(str(self.shards), MANIFEST)
        self.cfg = reconcile(resolve(RetrainConfig, flags), self.record, data, "retrain")  # as retrain runs
        self.study = optuna.create_study(study_name="s1", storage=url, direction="maximize")
        self.distributions = self.record.search_space.distributions()

    def trial(self, name: str, curve: list[float], state: TrialState, reason: str = "") -> None:
        t = self.study.ask(self.distributions)
        t.set_user_attr("trial", name)
        t.set_user_attr("folder", f"{self.root}/{name}")  # as the searcher names it: absolute, on this machine
        for epoch, value in enumerate(curve, start=1):
            t.report(value, epoch)
        if state == TrialState.FAIL:
            t.set_user_attr("fail_reason", reason)
            self.study.tell(t, state=state)
            return
        best = max(range(len(curve)), key=lambda i: curve[i])
        for key, value in (("best_value", curve[best]), ("best_epoch", best + 1), ("last_value", curve[-1])):
            t.set_user_attr(key, value)
        t.set_user_attr("last_epoch", len(curve))
        if state == TrialState.PRUNED:
            self.study.tell(t, state=state)  # Optuna keeps the last epoch's value
        else:
            self.study.tell(t, curve[best])  # the searcher tells a complete trial its best epoch

    def confirmed(self, names: list[str]) -> Confirmation:
        """The named trials confirmed with seeds 1 and 2, the first the best on validation."""
        by_name = {t.user_attrs["trial"]: t for t in self.study.trials}
        candidates = [
            Candidate(n, f"{self.root}/{n}", by_name[n].params, by_name[n].user_attrs["best_value"], 2) for n in names
        ]
        runs = [
            Run(n, seed, 2, {"val_clip_acc": 0.9 - 0.1 * i}, {**self.record.template, **c.params, "seed": seed}, [1.0])
            for i, (n, c) in enumerate(zip(names, candidates, strict=True))
            for seed in (1, 2)
        ]
        return Confirmation("val_clip_acc", "max", candidates, runs, 3.0)

    def report(self, confirmation: Confirmation, failed: list[tuple[str, str]] = ()) -> Path:
        """The report written where the sweep's storage keeps it."""
        report = self.root / "report"
        report.mkdir()
        inputs = ReportInput(self.cfg, self.record, self.study, confirmation, chosen_tests(), GENRES, list(failed))
        write_report_files(report, inputs)
        return report


# Each seed's test predictions of 6 clips (2 per genre): seed 1 confuses one metal clip for blues, seed 2 one
# reggae clip for metal.
SEED_TESTS = {1: ([0, 0, 1, 1, 2, 2], [0, 0, 1, 0, 2, 2]), 2: ([0, 0, 1, 1, 2, 2], [0, 0, 1, 1, 2, 1])}


def chosen_tests() -> dict:
    """The chosen configuration's test evaluation as ``retrain.test_chosen`` returns it (less the model)."""
    evaluations = []
    for seed, (true, pred) in SEED_TESTS.items():
        matrix = np.zeros((3, 3), int)
        np.add.at(matrix, (true, pred), 1)
        acc = float(np.mean(np.equal(true, pred)))
        evaluations.append(
            {"seed": seed, "clip_acc": acc, "clips": 6, "windows": 12, "confusion": matrix.tolist(), "genres": GENRES}
            | {"clip_true": true, "clip_pred": pred}
        )
    return {
        "trial": "t0",
        "seeds": [1, 2],
        "per_seed": [],
        "test_clips": 6,
        "test_windows": 12,
        "test_clip_acc_mean": 5 / 6,
        "test_clip_acc_std": 0.0,
        "test_window_acc_mean": 0.8,
        "test_window_acc_std": 0.01,
        "test_clip_macro_f1_mean": 0.8,
        "test_clip_macro_f1_std": 0.02,
        "exported_seed": 1,
        "tested": [{"trial": "t0", "seed": 1}, {"trial": "t0", "seed": 2}],
        "test_evaluations": evaluations,
    }


def small_sweep(tmp_path: Path) -> Sweep:
    """Three complete trials, two pruned by ASHA, one failed with a reason naming its folder."""
    sweep = Sweep(tmp_path)
    sweep.trial("t0", [0.5, 0.7, 0.8, 0.78], TrialState.COMPLETE)
    sweep.trial("t1", [0.4, 0.6], TrialState.PRUNED)
    sweep.trial("t2", [0.5, 0.6, 0.7, 0.75], TrialState.COMPLETE)
    sweep.trial("t3", [0.3], TrialState.PRUNED)
    sweep.trial("t4", [0.5, 0.65, 0.7, 0.72], TrialState.COMPLETE)
    sweep.trial("t5", [0.2], TrialState.FAIL, f"cannot read {sweep.root}/t5/checkpoint_000000: disk full")
    return sweep


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    height, width = matplotlib.image.imread(path).shape[:2]
    assert height > 100 and width > 100, (path, height, width)


def test_the_report_draws_optunas_plots_and_says_why_a_sample_is_too_small_for_one(tmp_path):
    sweep = small_sweep(tmp_path)
    report = sweep.report(sweep.confirmed(["t0", "t2"]), [("t5", "disk full")])
    summary = (report / "summary.md").read_text()
    for name in ("history", "learning_curves", "intermediate_values", "parallel_coordinate", "slice", "confusion"):
        assert_png(report / f"{name}.png")
    for name in ("history", "learning_curves", "intermediate_values", "parallel_coordinate", "slice"):
        assert f"![{name}]({name}.png)" in summary  # linked relative to the report's folder
    # 3 complete trials are too few for fANOVA over 2 hyperparameters: no picture, and the summary says why
    assert not (report / "importances.png").exists()
    assert "no importances.png: 3 complete trials are too few" in summary and "[importances.png]" not in summary

    # the top trials, best first by their best epoch, with their searched values and the confirmation's verdict
    top = summary[summary.index("The top 5 by") :].splitlines()
    assert "`learning_rate`" in top[2] and "`classifier_hidden_layer_size`" in top[2]
    assert top[4].startswith("| **chosen** | `t0` | 0 | 0.8000 (3) | complete | 4 |")
    assert top[5].startswith("| confirmed | `t2` |") and "| `t1` | 1 | 0.6000 (2) | pruned | 2 |" in top[7]

    # the study's copy beside them, for optuna-dashboard: every trial, each trial's folder beside the report
    copy = optuna.load_study(study_name="s1", storage=f"sqlite:///{report / 'optuna.db'}")
    assert [t.state for t in copy.trials] == [t.state for t in sweep.study.trials]
    assert [t.intermediate_values for t in copy.trials] == [t.intermediate_values for t in sweep.study.trials]
    assert {t.user_attrs["folder"] for t in copy.trials} == {f"../t{i}" for i in range(6)}


def test_a_study_with_one_complete_trial_gets_notes_instead_of_parameter_plots(tmp_path):
    sweep = Sweep(tmp_path)
    sweep.trial("t0", [0.5, 0.6, 0.7, 0.7], TrialState.COMPLETE)
    sweep.trial("t1", [0.4], TrialState.PRUNED)
    report = sweep.report(sweep.confirmed(["t0"]))
    summary = (report / "summary.md").read_text()
    for name in ("parallel_coordinate", "slice", "importances"):
        assert not (report / f"{name}.png").exists() and f"- no {name}.png: " in summary
    assert "no parallel_coordinate.png: 1 complete trial cannot show how the objective varies" in summary
    for name in ("history", "learning_curves", "intermediate_values"):
        assert_png(report / f"{name}.png")


def test_importances_are_drawn_once_there_are_enough_complete_trials(tmp_path):
    sweep = Sweep(tmp_path)
    rng = np.random.default_rng(0)
    for i in range(8):
        sweep.trial(f"t{i}", list(np.round(rng.uniform(0.3, 0.9, 4), 3)), TrialState.COMPLETE)
    report = sweep.report(sweep.confirmed(["t0"]))
    assert_png(report / "importances.png")
    assert "![importances](importances.png)" in (report / "summary.md").read_text()


def test_the_confusion_matrix_and_per_genre_scores_pool_every_retrain_seed(tmp_path):
    sweep = small_sweep(tmp_path)
    report = sweep.report(sweep.confirmed(["t0", "t2"]))
    metrics = json.loads((report / "test_metrics.json").read_text())
    pooled = metrics["pooled"]
    assert pooled["seeds"] == [1, 2] and pooled["clips"] == 12
    assert pooled["confusion"] == [[4, 0, 0], [1, 3, 0], [0, 1, 3]]  # both seeds' confusions, summed
    assert pooled["confusion"] == np.sum([s["confusion"] for s in metrics["per_seed"]], axis=0).tolist()
    assert np.allclose(np.sum(pooled["confusion_normalised"], axis=1), 1.0)  # rows: shares of the true genre
    blues, metal = pooled["per_genre"]["blues"], pooled["per_genre"]["metal"]
    assert (blues["precision"], blues["recall"], blues["support"]) == (0.8, 1.0, 4)
    assert (metal["precision"], metal["recall"]) == (0.75, 0.75)
    assert "clip_true" not in json.dumps(metrics)  # the predictions are pooled, not kept
    summary = (report / "summary.md").read_text()
    assert "| blues | 0.800 | 1.000 | 0.889 | 4 |" in summary and "| metal | 0.750 | 0.750 | 0.750 | 4 |" in summary
    assert "all 2 seeds pooled (6 clips x 2 = 12 predictions" in summary


def test_no_report_file_names_a_path_of_the_machine_that_wrote_it(tmp_path):
    sweep = small_sweep(tmp_path)
    failed = [("t5", sweep.study.trials[5].user_attrs["fail_reason"])]
    report = sweep.report(sweep.confirmed(["t0", "t2"]), failed)
    files = [p for p in report.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"summary.md", "retrain.json", "test_metrics.json", "trials.csv", "optuna.db"}
    for path in files:
        assert str(tmp_path).encode() not in path.read_bytes(), path
    summary = (report / "summary.md").read_text()
    assert "- `t5`: cannot read ../t5/checkpoint_000000: disk full" in summary  # its own folder, relative
    rows = {r["trial"]: r for r in csv.DictReader((report / "trials.csv").open())}
    assert rows["t5"]["fail_reason"] == "cannot read ../t5/checkpoint_000000: disk full"
    best = json.loads((report / "best_config.json").read_text())
    assert best["folder"] == "../t0" and (report / best["folder"]).resolve() == sweep.root / "t0"
    record = json.loads((report / "sweep_record.json").read_text())
    assert record["study_url"] == "sqlite:///optuna.db"
    assert (report / record["dataset"]["shards"]).resolve() == sweep.shards
    retrain = json.loads((report / "retrain.json").read_text())
    assert [c["folder"] for c in retrain["confirmation"]["candidates"]] == ["../t0", "../t2"]
    assert "genre-sweep predict SONGS --model model" in summary and "optuna-dashboard sqlite:///optuna.db" in summary


def test_the_next_sweep_run_in_the_report_folder_searches_the_same_space_beside_this_sweep(tmp_path):
    sweep = small_sweep(tmp_path)
    report = sweep.report(sweep.confirmed(["t0"]))
    command = next_sweep(sweep.cfg, sweep.record)
    assert command in (report / "summary.md").read_text()
    args = shlex.split(command)
    flag = {args[i]: args[i + 1] for i in range(2, len(args) - 1, 2)}
    assert args[:2] == ["genre-sweep", "sweep"] and flag["--space"] == "space.yaml" and flag["--name"] == "s1-more"
    assert load_space(str(report / flag["--space"])).differences(sweep.record.search_space) == []
    assert (report / flag["--storage"]).resolve() == sweep.storage
    assert (report / flag["--shards"]).resolve() == sweep.shards
    assert flag["--pretrained"] == "tiny" and flag["--metric"] == "val_clip_acc" and int(flag["--trials"]) == 70
    assert str(tmp_path) not in command
    # with a scheduler that reads no ASHA flag, the command gives none (a sweep would refuse them)
    median = dataclasses.replace(sweep.record, settings={**sweep.record.settings, "scheduler": "median"})
    flags = shlex.split(next_sweep(sweep.cfg, median))
    assert "--grace-period" in flags and "--reduction-factor" not in flags and "--max-t" not in flags


def legend_clear_of_the_axes(fig) -> bool:
    fig.canvas.draw()
    ax = fig.axes[0]
    return not ax.get_legend().get_window_extent().overlaps(ax.get_window_extent())


def test_learning_curves_of_35_trials_keep_each_trial_visible_and_the_legend_off_the_points():
    curves = [Curve(f"t{i}", "COMPLETE" if i % 3 else "PRUNED", [1, 2, 3], [0.5, 0.6, 0.7]) for i in range(35)]
    fig = learning_curves_figure(curves, "val_clip_acc", "max", "t4", [1.0, 3.0])
    try:
        lines = [line for line in fig.axes[0].get_lines() if len(line.get_xdata()) == 3]
        assert len(lines) == 35
        assert len({tuple(line.get_xdata()) for line in lines}) == 35  # equal curves, none hidden under another
        labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
        assert labels[0] == "chosen: t4 (best 0.700)" and len(labels) == 1 + 4 + 2 + 1  # 4 named, 2 groups, rungs
        assert legend_clear_of_the_axes(fig)
    finally:
        import matplotlib.pyplot as plt

        plt.close("all")


def test_the_history_legend_sits_outside_the_axes(tmp_path):
    import matplotlib.pyplot as plt

    sweep = small_sweep(tmp_path)
    fig = history_figure(sweep.study, "val_clip_acc", "max", "t2")
    try:
        assert legend_clear_of_the_axes(fig)
        labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
        assert "chosen: t2 (confirmed over seeds)" in labels and "pruned trial (its best epoch)" in labels
    finally:
        plt.close("all")


@pytest.mark.parametrize(
    ("settings", "rungs"),
    [
        ({"grace_period": 1, "reduction_factor": 3.0, "max_t": 10}, [1, 3, 9]),
        ({"grace_period": 2, "reduction_factor": 2.0, "max_t": 8}, [2, 4, 8]),
        ({}, []),
    ],
)
def test_ashas_rungs_are_rays(settings, rungs):
    assert asha_rungs(settings) == rungs
    if settings:  # as Ray's ASHA counts them
        from ray.tune.schedulers.async_hyperband import _Bracket

        bracket = _Bracket(settings["grace_period"], settings["max_t"], settings["reduction_factor"], 0)
        assert sorted(m for m, _ in bracket._rungs) == rungs


def test_paths_of_an_s3_sweep_are_its_uris(tmp_path):
    cfg = resolve(RetrainConfig, {"storage": "s3://bucket/sweeps", "name": "s1", "shards": "s3://bucket/shards"})
    sweep = Sweep(tmp_path)
    command = next_sweep(cfg, sweep.record)
    assert "--shards s3://bucket/shards --storage s3://bucket/sweeps --name s1-more" in command
    assert "--space space.yaml" in command and str(tmp_path) not in command
