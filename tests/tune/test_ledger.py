"""The cost ledger: each trial's running time, device, GPU fraction, epochs and GPU-hours; the stages after the search;
what trials.csv, the summary and the progress lines make of it. The real sweep's ledger is in test_budget.py."""

import json

import pytest

from genre_sweep.config import ConfigError
from genre_sweep.store import StoreOptions
from genre_sweep.tune.budget import count_result
from genre_sweep.tune.configs import SweepConfig
from genre_sweep.tune.ledger import (
    Ledger,
    StageCost,
    TrialCost,
    cost_lines,
    cost_note,
    duration_s,
    ledger_uri,
    load,
    record_stage,
    save,
    stage_rows,
    trial_columns,
)


def gpu_ledger() -> Ledger:
    """Two finished GPU trials (half a GPU for 2 h, a whole one for 30 min) and one on the CPU."""
    return Ledger(
        elapsed_s=5400.0,
        trials={
            "a": TrialCost("a", gpus=0.5, cpus=4, device="cuda:0 (NVIDIA H200)", seconds=7200.0, epochs=6, finished=1),
            "b": TrialCost("b", gpus=1.0, cpus=4, device="cuda:0 (NVIDIA H200)", seconds=1800.0, epochs=2, finished=2),
            "c": TrialCost("c", gpus=0.0, cpus=2, device="cpu", seconds=3600.0, epochs=3),
        },
        stages={"confirmation": StageCost(runs=3, seconds=3600.0, wall_s=1200.0, gpus=0.5, cpus=4)},
    )


def test_a_trials_gpu_hours_are_its_gpu_fraction_times_its_running_time_and_the_totals_their_sum():
    ledger = gpu_ledger()
    assert [t.gpu_hours for t in ledger.trials.values()] == [1.0, 0.5, 0.0]  # on the CPU: 0 GPU-hours
    assert [t.cpu_hours for t in ledger.trials.values()] == [8.0, 2.0, 2.0]
    assert ledger.gpu_hours == 1.5 and ledger.cpu_hours == 12.0 and ledger.seconds == 12600.0
    rows = stage_rows(ledger)
    assert [r[0] for r in rows] == ["search", "confirmation", "**total**"]
    assert rows[0][4] == ledger.gpu_hours and rows[1][4] == 0.5 and rows[-1][4] == 2.0  # the total: their sum
    assert rows[-1][2] == 5400.0 + 1200.0  # wall time: the search's, across resumes, and the confirmation's


def test_a_price_turns_gpu_hours_into_money_in_trials_csv_and_the_summary():
    ledger = gpu_ledger()
    rows = trial_columns([{"trial": "a"}, {"trial": "c"}, {"trial": "warm-started"}], ledger, price=2.5)
    assert rows[0]["cost"] == 2.5 and rows[0]["gpu_hours"] == 1.0 and rows[0]["device"] == "cuda:0 (NVIDIA H200)"
    assert rows[1]["cost"] == 0.0 and rows[1]["cpu_hours"] == 2.0 and rows[1]["gpus"] == 0.0
    assert rows[2]["cost"] == "" and rows[2]["wall_s"] == ""  # a study trial the ledger does not hold
    assert "cost" not in trial_columns([{"trial": "a"}], ledger, price=None)[0]
    table = "\n".join(cost_lines(ledger, price=2.5))
    assert "| search | 3 trials | 90.0 min | 3.50 h | 1.5000 | 12.0000 | 3.75 |" in table
    assert "| confirmation | 3 retrains | 20.0 min | 60.0 min | 0.5000 | 4.0000 | 1.25 |" in table
    assert "| **total** |  | 110.0 min | 4.50 h | 2.0000 | 16.0000 | 5.00 |" in table
    assert "cost |" not in "\n".join(cost_lines(ledger, price=None))


def test_the_progress_line_gives_the_cost_so_far_and_a_projection_labelled_as_one():
    ledger = gpu_ledger()
    note = cost_note(ledger, trials=10, price=2.0)
    # 1.5 GPU-h spent; the 2 finished trials' mean, 0.75 GPU-h, for the 8 others: 1.5 + 6.0
    assert (
        note == "1.5000 GPU-h so far (cost 3.00), projected 7.5000 GPU-h for all 10 trials at the finished trials' mean"
    )
    cpu = Ledger(trials={"c": TrialCost("c", cpus=2, seconds=1800.0, finished=1)})
    assert cost_note(cpu, trials=4).startswith("0 GPU-h (1.0000 CPU-h) so far, projected 4.0000 CPU-h")


def test_a_report_counts_once_even_when_tune_hands_it_over_again():
    cost = TrialCost("t", gpus=0.25, cpus=1)
    first = {"training_iteration": 1, "time_total_s": 10.0, "time_this_iter_s": 10.0, "val_clip_acc": 0.5}
    assert count_result(cost, {**first, "device": "cuda:0", "gpu_name": "NVIDIA H200"}, "val_clip_acc", "max")
    second = {"training_iteration": 2, "time_total_s": 16.0, "time_this_iter_s": 6.0, "val_clip_acc": 0.25}
    assert count_result(cost, second, "val_clip_acc", "max")
    assert not count_result(cost, {**second, "done": True}, "val_clip_acc", "max")  # the function returned
    assert (cost.seconds, cost.epochs, cost.best, cost.device) == (16.0, 2, 0.5, "cuda:0 (NVIDIA H200)")
    # resumed from its checkpoint of epoch 1: epoch 2 runs again, and is paid again
    assert count_result(cost, {**second, "time_total_s": 17.0, "time_this_iter_s": 7.0}, "val_clip_acc", "max")
    assert cost.seconds == 23.0 and cost.epochs == 2


def test_the_ledger_is_kept_beside_the_sweep_and_a_retrain_replaces_its_stages(tmp_path):
    root, options = str(tmp_path / "sweeps" / "s"), StoreOptions()
    assert ledger_uri(root) == str(tmp_path / "sweeps" / "s-budget.json")
    assert load(ledger_uri(root), options) == Ledger()  # none yet: empty
    ledger = gpu_ledger()
    ledger.fired = {"rule": "--time-budget", "message": "--time-budget 90.0 min spent"}
    save(ledger_uri(root), ledger, options)
    assert load(ledger_uri(root), options) == ledger
    record_stage(root, options, "test", [30.0], 31.0, gpus=0.5, cpus=4)
    record_stage(root, options, "test", [60.0], 62.0, gpus=0.5, cpus=4)  # a second retrain
    again = load(ledger_uri(root), options)
    assert again.stages["test"] == StageCost(1, 60.0, 62.0, 0.5, 4) and again.trials == ledger.trials
    (tmp_path / "sweeps" / "s-budget.json").write_text("{not json")
    assert load(ledger_uri(root), options) == Ledger()  # a damaged ledger: a warning, counts from zero
    assert json.loads(again.as_json())["elapsed_s"] == 5400.0


def test_budget_flags_are_checked_before_anything_runs():
    assert [duration_s(t) for t in ("90", "90s", "45m", "1.5h", " 2 min ")] == [90.0, 90.0, 2700.0, 5400.0, 120.0]
    new = {"storage": "/tmp/x", "shards": "/tmp/shards"}
    for bad, message in (
        ({"time_budget": "soon"}, "is not a duration"),
        ({"time_budget": "0"}, "time_budget must be > 0"),
        ({"gpu_hours": 2.0}, "trials reserve no GPU"),
        ({"gpu_hours": 0.0, "gpus_per_trial": 1.0}, "gpu_hours must be > 0"),
        ({"patience": 0}, "patience must be >= 1"),
        ({"min_delta": -0.1}, "min_delta must be >= 0"),
        ({"gpu_hour_price": -1.0}, "gpu_hour_price must be >= 0"),
    ):
        with pytest.raises(ConfigError, match=message):
            SweepConfig(**new, **bad)
    SweepConfig(**new, gpu_hours=2.0, gpus_per_trial=0.5, time_budget="2h", patience=5, min_delta=0.01)
