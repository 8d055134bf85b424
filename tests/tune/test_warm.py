"""A search that starts from what is known: --warm-start's previous trials, the recipe trial, --enqueue's entries,
on real Optuna studies (and one real sweep on local Ray)."""

import csv
import dataclasses
import json
import logging
import re
import warnings
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from genre_sweep.config import ConfigError, resolve
from genre_sweep.data.shards import Dataset
from genre_sweep.model.configs import TrainConfig
from genre_sweep.tune.configs import SweepConfig, SweepError
from genre_sweep.tune.confirm import Candidate, Confirmation, Run
from genre_sweep.tune.record import SweepRecord, make_record, new_sweep
from genre_sweep.tune.space import load_space
from genre_sweep.tune.sweep import main as sweep_main
from genre_sweep.tune.warm import known, load_enqueue, recipe_params, seed_study
from tests.conftest import QUICK_SPACE
from tests.tune.test_report import MANIFEST, Sweep
from tests.tune.test_sweep import sweep_args

# the default space with 2 epochs: the recipe (every train default) lies inside it
SPACE = "space:\n  num_train_epochs: null\nfixed:\n  num_train_epochs: 2\n  gradient_accumulation_steps: 1\n"


def space_file(tmp_path: Path, text: str = SPACE) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


def old_study(path: Path, space: Path, metric: str = "val_clip_acc", direction: str = "maximize") -> str:
    """A finished study at ``path`` (name ``old``) as a sweep leaves it: 10 trials of ``space`` (8 complete, 2 pruned
    with their epochs), then one whose learning rate is outside it, one without batch_size and one failed. Its URL."""
    url = f"sqlite:///{path}"
    study = optuna.create_study(
        storage=url, study_name="old", direction=direction, sampler=optuna.samplers.RandomSampler(seed=1)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([metric])
    distributions = load_space(str(space)).distributions()
    for i in range(10):
        t = study.ask(distributions)
        t.set_user_attr("trial", f"old{i}")
        curve = [0.3 + 0.01 * i, 0.4 + 0.02 * i]
        for epoch, value in enumerate(curve, start=1):
            t.report(value, epoch)
        if i % 4 == 3:
            study.tell(t, state=TrialState.PRUNED)
        else:
            study.tell(t, max(curve))
    params = dict(study.trials[0].params)
    wide = {**distributions, "learning_rate": FloatDistribution(1e-6, 1e-1, log=True)}
    study.add_trial(create_trial(params={**params, "learning_rate": 5e-2}, distributions=wide, value=0.9))
    del params["batch_size"]
    study.add_trial(
        create_trial(params=params, distributions={k: wide[k] for k in params}, value=0.8, state=TrialState.COMPLETE)
    )
    study.tell(study.ask(distributions), state=TrialState.FAIL)
    return url


def new(tmp_path: Path, space: Path, **flags: str) -> tuple[SweepConfig, SweepRecord, str]:
    """A new sweep's resolved config, its record and its study's URL (as ``before_sweep`` makes them)."""
    given = {
        "storage": str(tmp_path / "sweeps"),
        "name": "s2",
        "shards": str(tmp_path / "shards"),
        "pretrained": "tiny",
    }
    cfg, loaded = new_sweep(resolve(SweepConfig, {**given, "space": str(space), **flags}))
    return cfg, make_record(cfg, loaded, Dataset(str(tmp_path / "shards"), MANIFEST), cfg.study_url()), cfg.study_url()


def test_a_warm_start_adds_the_old_trials_that_fit_so_tpe_starts_informed(tmp_path, caplog):
    space = space_file(tmp_path)
    folder = tmp_path / "sweeps" / "old"  # a previous sweep's folder: its record names its study, beside it
    folder.mkdir(parents=True)
    old_study(folder / "optuna.db", space)
    (folder / "genre-sweep.json").write_text(json.dumps({"written_by": "genre-sweep sweep", "name": "old"}))
    cfg, record, url = new(tmp_path, space, warm_start=str(folder), recipe_trial="false")
    assert record.settings["warm_start"] == str(folder)  # recorded: resume and retrain know it
    study = optuna.create_study(storage=url, study_name="s2", direction="maximize")  # as the searcher makes it
    with caplog.at_level(logging.INFO, logger="genre_sweep"):
        seed_study(cfg, record, study)
    said = [m for m in caplog.messages if m.startswith("warm start:")]
    assert said == [
        f"warm start: 10 trials of {folder} added to the study, 2 skipped (batch_size missing: 1; learning_rate "
        "outside the new range: 1)"
    ]
    old = optuna.load_study(study_name="old", storage=f"sqlite:///{folder / 'optuna.db'}").trials[:10]
    assert [t.state for t in study.trials] == [t.state for t in old]
    for mine, theirs in zip(study.trials, old, strict=True):
        assert mine.params == theirs.params and mine.intermediate_values == theirs.intermediate_values
        assert mine.value == theirs.value  # a pruned trial's too (its last epoch's)
        assert (
            mine.user_attrs["warm_start"] == str(folder) and mine.user_attrs["warm_trial"] == theirs.user_attrs["trial"]
        )
        assert "trial" not in mine.user_attrs and "folder" not in mine.user_attrs  # no Tune trial of this sweep

    # TPE counts them toward its start-up trials: its first draw is its model's, not the seeded random start-up draw
    finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(finished) >= optuna.samplers.TPESampler()._n_startup_trials
    distributions = record.search_space.distributions()
    warm = optuna.load_study(study_name="s2", storage=url, sampler=optuna.samplers.TPESampler(seed=0))
    cold = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))  # its first draw: the start-up one
    assert warm.ask(distributions).params != cold.ask(distributions).params


def test_a_warm_start_that_cannot_inform_this_search_is_one_line(tmp_path):
    space = space_file(tmp_path)
    url = old_study(tmp_path / "loss.db", space, metric="val_loss", direction="minimize")
    with pytest.raises(SweepError, match=r"its study minimises val_loss, this sweep maximises val_clip_acc"):
        known(*new(tmp_path, space, warm_start=f"{url}#old")[:2])
    with pytest.raises(SweepError, match=r"no study there \(.*nowhere.db does not exist\)"):
        known(*new(tmp_path, space, warm_start=f"sqlite:///{tmp_path / 'nowhere.db'}#old")[:2])
    assert not (tmp_path / "nowhere.db").exists()  # nothing created where nothing was
    with pytest.raises(SweepError, match=r"not a sweep folder \(no genre-sweep.json\)"):
        known(*new(tmp_path, space, warm_start=str(tmp_path))[:2])
    with pytest.raises(
        SweepError,
        match=r"^--warm-start mysql://nobody@127.0.0.1:9/db: cannot read mysql://nobody@127.0.0.1:9/db: ImportError",
    ):
        known(*new(tmp_path, space, warm_start="mysql://nobody@127.0.0.1:9/db")[:2])  # no driver: one line


def test_the_recipe_is_the_train_defaults_or_their_nearest_values_in_the_space(tmp_path):
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    params, moved = recipe_params(load_space(str(space_file(tmp_path))))
    assert params == {name: defaults[name] for name in params} and len(params) == 8 and moved == []
    params, moved = recipe_params(load_space(str(space_file(tmp_path, QUICK_SPACE))))
    assert {k: params[k] for k in ("learning_rate", "batch_size", "num_train_epochs")} == {
        "learning_rate": 1e-3,  # 1.32e-4 is below the range: its low end
        "batch_size": 8,  # 2 is no choice: the nearest one
        "num_train_epochs": 6,  # 13 is above the range
    }
    assert moved == ["learning_rate 0.000132 -> 0.001", "batch_size 2 -> 8", "num_train_epochs 13 -> 6"]


@pytest.mark.parametrize(
    ("entries", "problem"),
    [
        ("- {learning_rate: 1.0e-4}\n- {learning_rat: 1.0e-4}", r"entry 2: learning_rat is not a searched hyperparam"),
        ("- {gradient_accumulation_steps: 2}", r"entry 1: gradient_accumulation_steps is fixed by the space"),
        ("- {batch_size: 3}", r"entry 1: batch_size 3 is outside the space \(choices \[2, 4, 8, 16\]\)"),
        ("- {learning_rate: 1e-2}", r"entry 1: learning_rate '1e-2' is outside the space \(\[5e-06, 0.0005\] log\)"),
        ("learning_rate: 1.0e-4", r"expected a list of configurations"),
        ("- 3", r"entry 1: expected a mapping"),
    ],
)
def test_an_enqueued_configuration_outside_the_space_is_one_line_naming_file_entry_and_problem(
    tmp_path, entries, problem
):
    space = load_space(str(space_file(tmp_path)))
    path = tmp_path / "first.yaml"
    path.write_text(entries)
    with pytest.raises(ConfigError, match=rf"^--enqueue {re.escape(str(path))}: {problem}"):
        load_enqueue(str(path), space)


def test_an_enqueued_float_of_an_integer_choice_is_that_choice(tmp_path):
    path = tmp_path / "first.yaml"
    path.write_text("- {batch_size: 16.0}")
    (entry,) = load_enqueue(str(path), load_space(str(space_file(tmp_path))))
    assert entry == {"batch_size": 16} and type(entry["batch_size"]) is int  # Tune's config and the study agree


def test_a_bad_enqueue_file_stops_the_sweep_before_it_starts(sweep_shards, tmp_path, capsys):
    (tmp_path / "first.yaml").write_text("- {batch_size: 4}\n- {dropout: 0.1}\n")
    args = sweep_args(sweep_shards, tmp_path / "sweeps", "bad", space_file(tmp_path), 3)
    assert sweep_main([*args, "--enqueue", str(tmp_path / "first.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "first.yaml: entry 2: dropout is not a searched hyperparameter" in err[0], err
    assert not [p for p in (tmp_path / "sweeps").rglob("*") if p.is_file()]  # nothing written


def test_a_warm_started_sweep_runs_the_recipe_then_the_enqueued_and_reports_best_vs_the_recipe(
    sweep_shards, tmp_path, caplog
):
    space = space_file(tmp_path)
    source = old_study(tmp_path / "old.db", space) + "#old"
    (tmp_path / "first.yaml").write_text("- {learning_rate: 2e-4}\n")  # partial: the sampler draws the rest
    storage = tmp_path / "sweeps"
    args = sweep_args(sweep_shards, storage, "w", space, 2, "--retrain-seeds", "1", "--confirm-top", "1")
    more = ["--warm-start", source, "--enqueue", str(tmp_path / "first.yaml"), "--recipe-trial"]
    with caplog.at_level(logging.INFO, logger="genre_sweep"):
        assert sweep_main([*args, *more, "--max-concurrent-trials", "2"]) == 0
    assert f"warm start: 10 trials of {source} added to the study, 2 skipped" in caplog.text
    record = json.loads((storage / "w" / "genre-sweep.json").read_text())
    assert record["settings"]["warm_start"] == source and record["settings"]["recipe_trial"] is True

    study = optuna.load_study(study_name="w", storage=f"sqlite:///{storage / 'w' / 'optuna.db'}")
    warm, own = study.trials[:10], study.trials[10:]
    assert all(t.user_attrs["warm_start"] == source for t in warm) and len(own) == 2
    assert not any("warm_start" in t.user_attrs for t in own)
    by_name = {t.user_attrs["trial"]: t for t in own}
    recipe, enqueued = own[0], own[1]  # the first Tune trial (by the order Tune asked) ran the recipe, then the file's
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    assert recipe.user_attrs["recipe"] is True and recipe.params == {k: defaults[k] for k in recipe.params}
    first = json.loads((storage / "w" / recipe.user_attrs["trial"] / "params.json").read_text())
    assert first == {k: defaults[k] for k in first} and set(first) == set(record["space"]["params"])
    assert enqueued.params["learning_rate"] == 2e-4 and enqueued.user_attrs["enqueued"].endswith("first.yaml#1")
    assert enqueued.params != recipe.params and len(enqueued.params) == 8  # the rest drawn from the space

    report = storage / "w" / "report"
    rows = list(csv.DictReader((report / "trials.csv").open()))
    assert [r["warm_start"] == source for r in rows] == [True] * 10 + [False] * 2
    assert [r["recipe"] for r in rows[10:]].count("True") == 1 and all(r["trial"] == "" for r in rows[:10])
    retrained = json.loads((report / "retrain.json").read_text())["confirmation"]
    candidates = {c["trial"]: c for c in retrained["candidates"]}
    assert recipe.user_attrs["trial"] in candidates and candidates[recipe.user_attrs["trial"]]["recipe"]
    assert set(candidates) <= set(by_name)  # only this sweep's trials: the warm ones have no folder to confirm
    versus, means = retrained["recipe"], {c["trial"]: c["mean"] for c in retrained["candidates"]}
    assert versus["difference"] == means[retrained["chosen"]] - means[recipe.user_attrs["trial"]]
    summary = (report / "summary.md").read_text()
    assert "The search started from 10 trials of" in summary and "ran the recipe" in summary
    if versus["trial"] == versus["chosen"]:
        assert "**Best vs the recipe:** the recipe's configuration" in summary
    else:
        said = re.search(r"\*\*Best vs the recipe:\*\* ([+-]\d+\.\d\d) points .*±(\d+\.\d\d) points: (.*)\.", summary)
        assert said is not None, summary
        assert float(said[1]) == round(100 * versus["difference"], 2)
        assert float(said[2]) == round(100 * versus["band"], 2)
        assert said[3] == ("within noise" if versus["within_noise"] else "beyond the noise")
    assert yaml.safe_load((report / "space.yaml").read_text())["fixed"]["num_train_epochs"] == 2


def test_the_summary_says_best_vs_the_recipe_as_retrain_json_has_it_and_leaves_warm_trials_out(tmp_path):
    sweep = Sweep(tmp_path)
    sweep.trial("t0", [0.5, 0.8], TrialState.COMPLETE)
    t = sweep.study.ask(sweep.distributions)
    for key, value in (("trial", "r"), ("folder", f"{sweep.root}/r"), ("recipe", True)):
        t.set_user_attr(key, value)
    t.report(0.6, 1)
    t.report(0.7, 2)
    sweep.study.tell(t, 0.7)
    old = {"warm_start": "sweeps/old", "warm_trial": "a1b2c3d4"}  # better than both, but another sweep's
    sweep.study.add_trial(create_trial(params=t.params, distributions=sweep.distributions, value=0.99, user_attrs=old))
    by_name = {t.user_attrs.get("trial"): t for t in sweep.study.trials}
    candidates = [
        Candidate("t0", f"{sweep.root}/t0", by_name["t0"].params, 0.8, 2),
        Candidate("r", f"{sweep.root}/r", by_name["r"].params, 0.7, 2, recipe="added"),
    ]
    clips = {"t0": [1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0], "r": [1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0]}
    values = {("t0", 1): 0.75, ("t0", 2): 0.7, ("r", 1): 0.55, ("r", 2): 0.6}
    runs = [
        Run(c.trial, seed, 2, {"val_clip_acc": values[c.trial, seed]}, {**c.params, "seed": seed}, clips[c.trial])
        for c in candidates
        for seed in (1, 2)
    ]
    report = sweep.report(Confirmation("val_clip_acc", "max", candidates, runs, 3.0))

    versus = json.loads((report / "retrain.json").read_text())["confirmation"]["recipe"]
    assert versus["trial"] == "r" and versus["chosen"] == "t0"
    assert versus["difference"] == pytest.approx(0.725 - 0.575)
    summary = (report / "summary.md").read_text()
    said = re.search(r"\*\*Best vs the recipe:\*\* ([+-]\d+\.\d\d) points .*±(\d+\.\d\d) points: (.*)\.", summary)
    assert said is not None, summary
    assert (float(said[1]), float(said[2])) == (round(100 * versus["difference"], 2), round(100 * versus["band"], 2))
    assert said[3] == ("within noise" if versus["within_noise"] else "beyond the noise")
    assert versus["within_noise"] == (abs(versus["difference"]) <= versus["band"])
    assert "best 1 configurations (by their best epoch's validation val_clip_acc) and the recipe's" in summary
    assert "| recipe | `r` |" in summary or "| within noise, recipe | `r` |" in summary
    # the warm trial: in trials.csv, not in this sweep's counts nor its top table
    assert "2 trials: 2 complete" in summary and "The search started from 1 trial of `sweeps/old`" in summary
    assert "a1b2c3d4" not in summary.split("The top")[1]
    rows = list(csv.DictReader((report / "trials.csv").open()))
    assert [(r["trial"], r["recipe"], r["warm_start"]) for r in rows] == [
        ("t0", "False", ""),
        ("r", "True", ""),
        ("", "False", "sweeps/old"),
    ]
