"""The adapter over Ray's and Optuna's private attributes, against the installed versions, in a second each."""

import copy
from pathlib import Path

import optuna
import pytest
import yaml
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from genre_sweep.errors import GenreSweepError
from genre_sweep.tune import internals

CLUSTER = Path(__file__).resolve().parents[2] / "cluster.yaml"


def test_optuna_search_exposes_its_study_trials_and_completed_set():
    searcher = OptunaSearch(space={"x": optuna.distributions.FloatDistribution(0, 1)}, metric="m", mode="max", seed=0)
    assert searcher.suggest("t1") is not None
    assert isinstance(internals.optuna_study(searcher), optuna.Study)
    trial = internals.optuna_trial(searcher, "t1")
    assert isinstance(trial, optuna.Trial) and "x" in trial.params
    assert internals.optuna_trial(searcher, "never-asked") is None
    assert internals.completed_trials(searcher) == set()


def test_asha_rungs_round_trip_and_trials_map_to_brackets():
    asha = ASHAScheduler(metric="m", mode="max", max_t=9, grace_period=1, reduction_factor=3)
    brackets = internals.asha_brackets(asha)
    assert brackets and internals.trial_brackets(asha) == {}
    rungs = internals.bracket_rungs(brackets[0])
    milestones = [m for m, _ in rungs]
    assert milestones == sorted(milestones, reverse=True) and all(r == {} for _, r in rungs)
    internals.set_bracket_rungs(brackets[0], {float(milestones[-1]): {"t1": 0.5}})
    assert internals.bracket_rungs(brackets[0])[-1] == (milestones[-1], {"t1": 0.5})
    internals.trial_brackets(asha)["t1"] = brackets[0]
    assert internals.trial_brackets(asha)["t1"] is brackets[0]


def test_the_median_rules_results_are_per_trial_lists_and_another_key_counts_as_a_trial():
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import MedianStoppingRule, TrialScheduler

    rule = MedianStoppingRule(
        time_attr="training_iteration",
        metric="m",
        mode="max",
        grace_period=1,
        min_samples_required=1,
        min_time_slice=float("inf"),  # never pauses (and so never asks a Tune controller for its trials)
    )
    assert internals.median_metric(rule) == "m"
    first, second = (Trial("t", trial_id=tid, stub=True) for tid in ("t1", "t2"))
    assert rule.on_trial_result(None, first, {"training_iteration": 1, "m": 0.5}) == TrialScheduler.CONTINUE
    assert internals.median_results(rule) == {first: [{"training_iteration": 1, "m": 0.5}]}
    # what a restored sweep puts back under a trial's id is compared with, as Ray compares its own trials
    internals.median_results(rule)["t0"] = [{"training_iteration": 1, "m": 0.9}, {"training_iteration": 2, "m": 0.9}]
    assert rule.on_trial_result(None, second, {"training_iteration": 2, "m": 0.2}) == TrialScheduler.STOP
    rule._results = {first: "not a list"}
    with pytest.raises(internals.LibraryChanged, match=r"MedianStoppingRule\._results no longer maps trials"):
        internals.median_results(rule)


def test_a_restored_tuner_takes_a_new_scheduler(tmp_path):
    tuner = tune.Tuner(lambda config: None, run_config=tune.RunConfig(storage_path=str(tmp_path), name="t"))
    asha = ASHAScheduler(metric="m", mode="max", max_t=3)
    internals.set_restored_scheduler(tuner, asha)
    assert internals.restored_scheduler(tuner) is asha


def test_the_cluster_config_is_prepared_and_validated_offline():
    raw = yaml.safe_load(CLUSTER.read_text())
    full = internals.prepare_cluster_config(copy.deepcopy(raw))
    assert full["available_node_types"]["gpu_worker"]["resources"]["GPU"] >= 1
    raw["available_node_types"]["gpu_worker"]["min_wrkers"] = 0
    with pytest.raises(Exception, match="min_wrkers"):
        internals.prepare_cluster_config(raw)


def test_a_missing_or_reshaped_attribute_is_named_in_one_clear_error():
    class Upgraded:  # what an OptunaSearch or ASHAScheduler would look like after a breaking upgrade
        _brackets = {"not": "a list"}

    with pytest.raises(internals.LibraryChanged, match=r"Upgraded\._ot_study is gone .*internals\.py"):
        internals.optuna_study(Upgraded())
    with pytest.raises(internals.LibraryChanged, match=r"Upgraded\._brackets is a dict, not the list"):
        internals.asha_brackets(Upgraded())
    assert issubclass(internals.LibraryChanged, GenreSweepError)  # the job runner prints it as one line


def test_tunes_stop_handler_is_the_one_its_run_loop_installs_and_sets_its_stop_event():
    import signal

    from ray.tune import tune as tune_run

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGUSR1)}
    try:
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)
        assert internals.request_tune_stop() is False  # no run yet: nothing to stop gracefully
        signal.signal(signal.SIGUSR1, lambda *_: None)
        with pytest.raises(internals.LibraryChanged, match="SIGUSR1"):
            internals.request_tune_stop()  # a handler that is not Tune's
        stop_event = tune_run._setup_signal_catching()  # what Tuner.fit does first
        assert internals.request_tune_stop() is True
        assert stop_event.is_set()
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def test_tune_propagates_no_aws_credential_once_told():
    from ray.tune.execution import class_cache

    internals.keep_credentials_out_of_trials()
    assert not set(internals.AWS_CREDENTIALS) & class_cache.ENV_VARS_TO_PROPAGATE
    assert "RAY_CHDIR_TO_TRIAL_DIR" in class_cache.ENV_VARS_TO_PROPAGATE  # the rest still propagate


def test_a_running_study_trial_can_be_annotated_before_it_is_told():
    study = optuna.create_study()
    study.ask()
    (frozen,) = study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
    internals.running_trial(study, frozen).set_user_attr("fail_reason", "why")
    study.tell(frozen.number, state=optuna.trial.TrialState.FAIL)
    assert study.trials[0].user_attrs == {"fail_reason": "why"}


def test_deleting_a_checkpoint_that_is_gone_is_a_no_op_once_told(tmp_path):
    import pyarrow.fs as pafs
    from ray.train._internal import checkpoint_manager

    internals.tolerate_deleted_checkpoints()
    internals.tolerate_deleted_checkpoints()  # idempotent: wraps Ray's function once
    (tmp_path / "checkpoint_000001").mkdir()
    checkpoint_manager._delete_fs_path(fs=pafs.LocalFileSystem(), fs_path=str(tmp_path / "checkpoint_000001"))
    assert not (tmp_path / "checkpoint_000001").exists()  # still deletes what is there
    missing = str(tmp_path / "checkpoint_000002")
    with pytest.raises(FileNotFoundError):  # what Ray's own does, inside Tune's checkpoint handling
        checkpoint_manager._delete_fs_path.wrapped(fs=pafs.LocalFileSystem(), fs_path=missing)
    checkpoint_manager._delete_fs_path(fs=pafs.LocalFileSystem(), fs_path=missing)


def test_an_actors_log_lines_are_renamed_by_the_token_rays_log_monitor_reads(capsys):
    import inspect

    from ray._private import log_monitor

    internals.name_actor_in_logs("GenreSweepTrial(t2)")
    captured = capsys.readouterr()
    assert captured.out == captured.err == ":actor_name:GenreSweepTrial(t2)\n"
    # the log monitor still takes such a line as the name of the lines after it (tests/tune/test_trial.py sees it)
    assert "LOG_PREFIX_ACTOR_NAME" in inspect.getsource(log_monitor.LogMonitor)


def test_tunes_tensorboard_hint_is_left_out_once_told(capsys):
    import inspect

    from ray.tune.experimental.output import AirVerbosity, ProgressReporter, TuneTerminalReporter

    # the hint is still printed there, naming the tensorboard_path Tune gives
    assert "tensorboard --logdir" in inspect.getsource(inspect.unwrap(ProgressReporter.experiment_started))
    internals.drop_tensorboard_hint()
    internals.drop_tensorboard_hint()  # idempotent: wraps Tune's method once
    assert inspect.unwrap(ProgressReporter.experiment_started) is ProgressReporter.experiment_started.__wrapped__
    TuneTerminalReporter(AirVerbosity.DEFAULT, num_samples=1).experiment_started(
        experiment_name="s",
        experiment_path="/storage/s",
        searcher_str="OptunaSearch",
        scheduler_str="ASHA",
        total_num_samples=1,
        tensorboard_path="/tmp/ray/session_x/artifacts/s/driver_artifacts",
    )
    out = capsys.readouterr().out
    assert "View detailed results here: /storage/s" in out and "TensorBoard" not in out
