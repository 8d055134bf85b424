"""--sampler and --scheduler: each sampler on the space's distributions, seeded; each scheduler's state across a new
instance (what --resume makes); and a short real sweep per (sampler, scheduler) pair whose stopped trials the study
holds as PRUNED with their values."""

import json
import logging
import warnings

import numpy as np
import optuna
import pytest
from ray.tune.experiment import Trial

from genre_sweep.config import ConfigError, resolve
from genre_sweep.data.shards import Dataset
from genre_sweep.tune import internals
from genre_sweep.tune.configs import SAMPLERS, SweepConfig
from genre_sweep.tune.record import reconcile
from genre_sweep.tune.report import asha_rungs
from genre_sweep.tune.samplers import make_sampler
from genre_sweep.tune.schedulers import hyperband_brackets, make_scheduler, refuse_unused_flags, state_uri
from genre_sweep.tune.search import PruneAwareOptunaSearch
from genre_sweep.tune.space import DEFAULT_SPACE, SearchSpace
from genre_sweep.tune.sweep import main as sweep_main
from tests.conftest import QUICK_SPACE
from tests.tune.test_record import MANIFEST, recorded
from tests.tune.test_sweep import sweep_args

SPACE = SearchSpace(DEFAULT_SPACE, {}).distributions()  # categorical, int, float and log-float parameters


def objective(config: dict) -> float:
    """A made-up validation accuracy, smooth in the parameters, so the samplers have something to model."""
    lr = np.log10(config["learning_rate"])
    return float(
        0.9 - 0.05 * (lr + 4) ** 2 - 0.002 * abs(config["batch_size"] - 8) + 0.01 * config["encoder_update_rank"]
    )


def suggestions(sampler: str, seed: int, trials: int, tmp_path, concurrent: bool = False) -> list[dict]:
    """``trials`` configurations from a searcher with ``sampler``, one at a time, each told its (made-up) epochs;
    every third stopped after its first epoch (PRUNED), as a scheduler would."""
    searcher = PruneAwareOptunaSearch(
        space=SPACE,
        metric="val_clip_acc",
        mode="max",
        sampler=make_sampler(sampler, seed, concurrent, SPACE),
        default_epochs=20,
        trials_root=str(tmp_path),
    )
    configs = []
    for i in range(trials):
        config = searcher.suggest(f"t{i}")
        configs.append(config)
        epochs = 1 if i % 3 == 2 else config["num_train_epochs"]
        for epoch in range(1, epochs + 1):
            result = {"val_clip_acc": objective(config) - 0.1 / epoch, "training_iteration": epoch}
            if epoch < epochs:
                searcher.on_trial_result(f"t{i}", result)
        searcher.on_trial_complete(f"t{i}", result)
    study = internals.optuna_study(searcher)
    states = [t.state.name for t in study.trials]
    assert states == ["PRUNED" if i % 3 == 2 else "COMPLETE" for i in range(trials)]
    return configs


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_each_sampler_samples_the_space_quietly_and_the_same_seed_suggests_the_same_configurations(
    sampler, tmp_path, caplog
):
    trials = 16  # past TPE's and GP's 10 random startup (complete) trials, so their models suggest the last ones
    with warnings.catch_warnings(record=True) as warned, caplog.at_level(logging.INFO):
        warnings.simplefilter("always")
        first = suggestions(sampler, 0, trials, tmp_path / "a")
        again = suggestions(sampler, 0, trials, tmp_path / "b")
    assert first == again  # one at a time, the same seed and results: the same configurations
    assert suggestions(sampler, 1, 2, tmp_path / "c") != first[:2]  # another seed, others
    for config in first:  # every value within its range, of its kind
        for name, spec in DEFAULT_SPACE.items():
            value = config[name]
            if spec["type"] == "categorical":
                assert value in spec["choices"], (name, value)
            else:
                assert spec["low"] <= value <= spec["high"] and isinstance(value, int) == (spec["type"] == "int")
    # no warning a user can do nothing about: Optuna's "experimental", CMA-ES's per parameter and trial
    optuna_warnings = [
        w
        for w in warned
        if "optuna" in str(w.filename) or issubclass(w.category, optuna.exceptions.ExperimentalWarning)
    ]
    assert optuna_warnings == [], [str(w.message) for w in optuna_warnings]
    assert not [r for r in caplog.records if r.name.startswith("optuna") and r.levelno >= logging.WARNING]
    (said,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"sampler: {sampler}")][:1]
    if sampler == "cmaes":  # its one line about the categorical parameters it cannot sample
        assert "batch_size, classifier_hidden_layer_size (categorical) at random, independently" in said


def test_tpe_is_multivariate_and_lies_about_running_trials_only_when_they_run_at_once():
    alone, together = make_sampler("tpe", 0, False, SPACE), make_sampler("tpe", 0, True, SPACE)
    assert alone._multivariate is True and together._multivariate is True  # (Optuna's attributes, read only here)
    assert alone._constant_liar is False and together._constant_liar is True


def config(tmp_path, scheduler: str, **flags) -> SweepConfig:
    values = {"grace_period": 1, "reduction_factor": 3.0, "max_t": 9, **flags}
    return SweepConfig(storage=str(tmp_path), name="s", shards=str(tmp_path), scheduler=scheduler, **values)


def trial(trial_id: str) -> Trial:
    return Trial("genre_sweep_trial", trial_id=trial_id, stub=True)


def run(scheduler, results: list[tuple[str, int, float]], trials: dict[str, Trial]) -> list[str]:
    """Feed ``results`` (trial id, epoch, value) to ``scheduler``; its decisions. A trial is added at its first result
    (Hyperband's bracket draw seeded, as a test needs), and completed at epoch 3."""
    decisions = []
    for tid, epoch, value in results:
        if tid not in trials:
            trials[tid] = trial(tid)
            np.random.seed(len(trials))
            scheduler.on_trial_add(None, trials[tid])
        result = {"val_clip_acc": value, "training_iteration": epoch}
        if epoch == 3:
            scheduler.on_trial_complete(None, trials[tid], result)
            decisions.append("COMPLETE")
        else:
            decisions.append(scheduler.on_trial_result(None, trials[tid], result))
    return decisions


BEFORE = [(t, e, v) for t, v in (("a", 0.5), ("b", 0.6), ("c", 0.7)) for e in (1, 2, 3)] + [("d", 1, 0.8)]
AFTER = [("d", 1, 0.8), ("d", 2, 0.8), ("e", 1, 0.1), ("f", 1, 0.9), ("f", 2, 0.2), ("g", 1, 0.65), ("g", 2, 0.1)]


@pytest.mark.parametrize("name", ["asha", "hyperband", "median"])
def test_a_schedulers_state_saved_then_restored_by_a_new_instance_gives_the_same_decisions(name, tmp_path, caplog):
    """The driver killed after BEFORE (trial d running): a new scheduler restores the state and, with Tune adding
    the sweep's trials back (a..d, d resumed from its checkpoint of epoch 0), decides as the first would have."""
    cfg = config(tmp_path, name)
    first = make_scheduler(cfg)
    first.set_search_properties("val_clip_acc", "max")
    first_trials: dict[str, Trial] = {}
    run(first, BEFORE, first_trials)
    kept = state_uri(cfg.root, name)  # ASHA's keeps the name sweeps started before have
    assert kept == str(tmp_path / ("s-asha-state.json" if name == "asha" else "s-scheduler-state.json"))
    saved = json.loads((tmp_path / kept).read_text())

    resumed = make_scheduler(cfg)
    with caplog.at_level(logging.INFO, logger="genre_sweep"):
        assert resumed.restore_state() is True
    assert "restored from" in caplog.text
    resumed.set_search_properties("val_clip_acc", "max")
    resumed_trials = {}
    for tid in "abcd":  # Tune adds every trial of the restored experiment (new Trial objects, the same ids)
        resumed_trials[tid] = trial(tid)
        resumed.on_trial_add(None, resumed_trials[tid])
    resumed._save()  # what the resumed driver's first decision writes: the killed driver's rungs or results
    again = json.loads((tmp_path / kept).read_text())
    assert again.get("rungs") == saved.get("rungs") and again.get("results") == saved.get("results")
    # (ASHA's running trials keep their brackets; Tune's finished trials, added back too, draw one they never use)
    assert saved.get("trial_bracket", {}).items() <= again.get("trial_bracket", {}).items()
    expected = run(first, AFTER, first_trials)
    assert run(resumed, AFTER, resumed_trials) == expected
    assert "STOP" in expected  # the state decided something: a trial worse than the others stopped


def test_hyperband_has_as_many_brackets_as_its_rungs_allow_and_the_median_rule_none():
    assert hyperband_brackets(1, 3.0, 20) == 3 and hyperband_brackets(1, 3.0, 6) == 2
    assert hyperband_brackets(1, 3.0, 2) == 1  # one rung: ASHA
    assert len(internals.asha_brackets(make_scheduler(config("/tmp", "hyperband", max_t=20)))) == 3
    settings = {"grace_period": 1, "reduction_factor": 3.0, "max_t": 9}
    assert asha_rungs({**settings, "scheduler": "hyperband"}) == asha_rungs(settings) == [1, 3, 9]
    assert asha_rungs({**settings, "scheduler": "median"}) == asha_rungs({**settings, "scheduler": "none"}) == []


@pytest.mark.parametrize(
    ("scheduler", "flag", "message"),
    [
        (
            "median",
            "reduction_factor",
            "--reduction-factor has no effect with --scheduler median; only asha and hyperband read it",
        ),
        ("median", "max_t", "--max-t has no effect with --scheduler median"),
        (
            "none",
            "grace_period",
            "--grace-period has no effect with --scheduler none; only asha, hyperband and median read it",
        ),
    ],
)
def test_a_flag_the_scheduler_does_not_read_is_refused(scheduler, flag, message, tmp_path):
    given = SweepConfig(storage=str(tmp_path), shards=str(tmp_path), scheduler=scheduler, **{flag: 2})
    with pytest.raises(ConfigError, match=message):
        refuse_unused_flags(given)
    refuse_unused_flags(SweepConfig(storage=str(tmp_path), shards=str(tmp_path), scheduler="hyperband", max_t=2))


def test_a_sweep_recorded_before_the_choice_resumes_with_tpe_and_asha_and_a_new_one_records_its_own(tmp_path):
    old = recorded(tmp_path, None)
    for name in ("sampler", "scheduler"):  # what a record written before --sampler and --scheduler holds
        del old.settings[name]
    given = resolve(SweepConfig, {"storage": str(tmp_path), "resume": "true"})
    cfg = reconcile(given, old, Dataset("/data", MANIFEST), "--resume")
    assert (cfg.sampler, cfg.scheduler) == ("tpe", "asha")
    new = recorded(tmp_path, None, sampler="qmc", scheduler="none")  # `none` is the choice, not an unset flag
    assert (new.settings["sampler"], new.settings["scheduler"]) == ("qmc", "none")
    with pytest.raises(ConfigError, match="--max-t has no effect with --scheduler none"):
        recorded(tmp_path, None, scheduler="none", max_t="4")


QUICK = QUICK_SPACE.replace(
    "num_train_epochs: {type: int, low: 3, high: 6}", "num_train_epochs: {type: int, low: 2, high: 3}"
)
assert QUICK != QUICK_SPACE  # 2 or 3 epochs a trial: a few seconds each


@pytest.mark.parametrize(
    ("sampler", "scheduler", "trials", "more"),
    [
        ("gp", "hyperband", 3, ()),
        # the loss, which ties less than the accuracy of 8 clips: the median rule stops on a strictly worse value
        ("cmaes", "median", 4, ("--metric", "val_loss")),
        ("qmc", "none", 3, ()),
        pytest.param("random", "asha", 3, (), marks=pytest.mark.slow),  # ASHA: as every other sweep test
    ],
)
def test_a_short_sweep_with_each_sampler_and_scheduler_prunes_into_the_study(
    sampler, scheduler, trials, more, sweep_shards, tmp_path, caplog
):
    space = tmp_path / "space.yaml"
    space.write_text(QUICK)
    storage = tmp_path / "sweeps"
    args = sweep_args(sweep_shards, storage, "p", space, trials, "--no-retrain", "--max-concurrent-trials", "1", *more)
    with caplog.at_level(logging.INFO, logger="genre_sweep"):
        assert sweep_main([*args, "--sampler", sampler, "--scheduler", scheduler]) == 0
    assert any(m.startswith(f"sampler: {sampler} (") for m in caplog.messages)
    record = json.loads((storage / "p" / "genre-sweep.json").read_text())
    assert (record["settings"]["sampler"], record["settings"]["scheduler"]) == (sampler, scheduler)
    study = optuna.load_study(study_name="p", storage=f"sqlite:///{storage / 'p' / 'optuna.db'}")
    assert len(study.trials) == trials
    for t in study.trials:  # whatever stopped a trial, the study holds it as PRUNED, with each epoch's value
        epochs = len(t.intermediate_values)
        assert sorted(t.intermediate_values) == list(range(1, epochs + 1))
        assert t.state.name == ("PRUNED" if epochs < t.params["num_train_epochs"] else "COMPLETE"), t
        best = (min if more else max)(t.intermediate_values.values())  # (more: --metric val_loss)
        assert t.user_attrs["last_epoch"] == epochs and t.user_attrs["best_value"] == best
    stopped = [m for m in caplog.messages if " stopped by " in m]
    assert len(stopped) == sum(t.state.name == "PRUNED" for t in study.trials)
    if scheduler == "none":
        assert not stopped and not list(storage.glob("p-*-state.json"))
    else:
        kept = storage / ("p-asha-state.json" if scheduler == "asha" else "p-scheduler-state.json")
        assert json.loads(kept.read_text())
        label = {"asha": "ASHA", "hyperband": "Hyperband", "median": "the median stopping rule"}[scheduler]
        assert all(f"stopped by {label} after" in m for m in stopped)
    if scheduler in ("median", "asha"):  # seeded, so always: the median rule stops the 4th trial (its loss well above
        assert stopped  # the others'), ASHA the 3rd
    if sampler == "cmaes":  # its trials after the first were drawn by CMA-ES, which keeps its state in the study
        assert any(k.startswith("cma:") for t in study.trials[1:] for k in t.system_attrs)


@pytest.mark.slow
def test_a_killed_median_sweep_resumes_with_its_results_and_finishes(sweep_shards, tmp_path):
    """The driver SIGKILLed mid-sweep (a trial running): --resume restores the median rule's results, keeps them, and
    finishes every trial, each told to the study once."""
    import os
    import signal
    import sqlite3
    import subprocess
    import sys
    import time

    space = tmp_path / "space.yaml"
    space.write_text(QUICK)
    storage, name = tmp_path / "sweeps", "m"
    args = sweep_args(sweep_shards, storage, name, space, 5, "--no-retrain", "--max-concurrent-trials", "1")
    args += ["--sampler", "random", "--scheduler", "median"]
    state = storage / f"{name}-scheduler-state.json"

    def finished() -> int:
        try:
            with sqlite3.connect(f"file:{storage / name / 'optuna.db'}?mode=ro", uri=True, timeout=1) as con:
                return con.execute("SELECT COUNT(*) FROM trials WHERE state IN ('COMPLETE', 'PRUNED')").fetchone()[0]
        except sqlite3.Error:
            return 0

    log = (tmp_path / "driver.log").open("w")
    command = [sys.executable, "-m", "genre_sweep.tune.sweep", *args]
    driver = subprocess.Popen(command, start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and driver.poll() is None and finished() < 3:
        time.sleep(0.5)
    assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-4000:]
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and the Ray it started
    driver.wait()
    before = json.loads(state.read_text())["results"]
    assert len(before) >= 3

    done = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=420)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "median stopping state restored from" in done.stdout + done.stderr
    after = json.loads(state.read_text())["results"]
    for trial_id, results in before.items():  # the killed driver's results kept (a rerun epoch replaced, not added)
        assert trial_id in after and len(after[trial_id]) >= len(results)
        assert [t for t, _ in after[trial_id]] == sorted({t for t, _ in after[trial_id]})
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{storage / name / 'optuna.db'}")
    told = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len({t.user_attrs["trial"] for t in told}) == len(told) >= 5
    assert "RUNNING" not in {t.state.name for t in study.trials}
