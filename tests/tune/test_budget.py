"""Budgets and stop rules: each rule on its own measure (pure), the refusal of a resume whose budget is spent, and
real sweeps on local Ray that a rule ends, resumed with a larger budget."""

import csv
import json
import logging
import math
import re

import optuna
import pytest

from genre_sweep.store import StoreOptions
from genre_sweep.tune import internals
from genre_sweep.tune.budget import Rules, fired_rule, refuse_if_spent, since_improvement
from genre_sweep.tune.configs import SweepConfig, SweepError
from genre_sweep.tune.ledger import Ledger, TrialCost, ledger_uri, load, save
from genre_sweep.tune.retrain import load_results
from genre_sweep.tune.sweep import main as sweep_main
from tests.tune.test_sweep import sweep_args


def ledger_of(*bests: float, gpus: float = 0.0, seconds: float = 60.0) -> Ledger:
    """Finished trials with these best values, in this order."""
    return Ledger(
        trials={
            f"t{i}": TrialCost(f"t{i}", gpus=gpus, cpus=1, seconds=seconds, epochs=2, best=b, finished=i + 1)
            for i, b in enumerate(bests)
        }
    )


def cost_row(summary: str, stage: str) -> list[str]:
    """The cells after the stage's name in summary.md's cost table."""
    line = next(line for line in summary.splitlines() if line.startswith(f"| {stage} |"))
    return [cell.strip() for cell in line.strip("|").split("|")][1:]


def test_the_time_budget_counts_the_wall_time_across_resumes():
    rules = Rules("val_clip_acc", "max", time_budget_s=600.0)
    assert fired_rule(rules, Ledger(), 599.0) is None
    fired = fired_rule(rules, Ledger(), 600.0)
    assert fired.rule == "--time-budget" and fired.message == (
        "--time-budget 10.0 min spent (10.0 min of wall time since the sweep's start, across resumes)"
    )


def test_the_gpu_hour_budget_is_the_sum_over_trials_of_gpu_fraction_times_running_time():
    rules = Rules("val_clip_acc", "max", gpu_hours=1.0)
    assert fired_rule(rules, ledger_of(0.5, 0.6, gpus=0.5, seconds=2400.0), 0.0) is None  # 2 x 2/3 h x 0.5 GPU
    fired = fired_rule(rules, ledger_of(0.5, 0.6, 0.7, gpus=0.5, seconds=2400.0), 0.0)  # 3 x 2/3 h x 0.5 GPU
    assert fired.rule == "--gpu-hours" and "1.0000 GPU-hours used" in fired.message
    assert fired_rule(rules, ledger_of(*[0.5] * 100, gpus=0.0, seconds=3600.0), 0.0) is None  # CPU trials: none


def test_stop_at_is_reached_in_the_objectives_direction():
    assert fired_rule(Rules("val_clip_acc", "max", stop_at=0.8), ledger_of(0.5, 0.79), 0.0) is None
    fired = fired_rule(Rules("val_clip_acc", "max", stop_at=0.8), ledger_of(0.5, 0.8, 0.9), 0.0)
    assert (
        fired.rule == "--stop-at" and fired.message == "--stop-at 0.8 reached: val_clip_acc 0.9 (trial t2, by epoch 2)"
    )
    assert fired_rule(Rules("val_loss", "min", stop_at=0.3), ledger_of(0.5, 0.31), 0.0) is None
    assert fired_rule(Rules("val_loss", "min", stop_at=0.3), ledger_of(0.5, 0.29), 0.0).rule == "--stop-at"
    running = Ledger(trials={"r": TrialCost("r", best=0.95, epochs=1)})  # a running trial's epoch counts at once
    assert fired_rule(Rules("val_clip_acc", "max", stop_at=0.9), running, 0.0).rule == "--stop-at"


def test_patience_counts_finished_trials_since_the_best_improved_by_more_than_min_delta():
    assert since_improvement([0.5, 0.6, 0.6, 0.55], "max", 0.0) == 2
    assert since_improvement([0.5, 0.6, 0.605, 0.55], "max", 0.01) == 2  # 0.605 is no improvement by 0.01
    assert since_improvement([0.9, 0.8, 0.7], "min", 0.0) == 0
    assert since_improvement([math.nan, 0.5, math.nan], "max", 0.0) == 1
    rules = Rules("val_clip_acc", "max", patience=3, min_delta=0.01)
    assert fired_rule(rules, ledger_of(0.5, 0.6, 0.605, 0.55), 0.0) is None
    assert fired_rule(rules, ledger_of(0.5, 0.6, 0.605, 0.55, 0.6), 0.0).message == (
        "--patience 3: the best val_clip_acc (0.605) has not improved by more than 0.01 in the last 3 finished trials"
    )
    assert fired_rule(rules, ledger_of(0.5, 0.6, 0.62, 0.55), 0.0) is None
    running = ledger_of(0.5, 0.6)
    running.trials["r"] = TrialCost("r", best=0.1)  # not finished: does not count
    assert fired_rule(Rules("val_clip_acc", "max", patience=2), running, 0.0) is None


def test_a_restored_search_that_a_stop_rule_ended_is_open_again_until_all_its_trials_are_drawn():
    from ray.tune.search import Searcher
    from ray.tune.search.search_generator import SearchGenerator

    internals.reopen_stopped_search()
    generator = SearchGenerator(Searcher())  # any searcher: the state is the generator's own
    generator.set_state({"counter": 1, "total_samples": 4, "finished": True, "experiment": None})  # stop_all's
    assert not generator.is_finished()
    generator.set_state({"counter": 4, "total_samples": 4, "finished": True, "experiment": None})
    assert generator.is_finished()


def test_a_resume_whose_budget_is_spent_is_refused_in_one_line_before_ray_starts(tmp_path):
    spent = ledger_of(0.6, 0.5)  # the second finished trial did not improve
    spent.elapsed_s = 700.0
    save(ledger_uri(str(tmp_path / "s")), spent, StoreOptions())
    cfg = SweepConfig(storage=str(tmp_path), name="s", resume=True, metric="val_clip_acc", time_budget="10m")
    with pytest.raises(SweepError, match=r"--time-budget 10.0 min spent .* already, .* give a larger --time-budget"):
        refuse_if_spent(cfg)
    for more in ({"time_budget": "1h"}, {"time_budget": None}, {"patience": 2}):
        refuse_if_spent(SweepConfig(storage=str(tmp_path), name="s", resume=True, metric="val_clip_acc", **more))
    with pytest.raises(SweepError, match="--patience 1"):
        refuse_if_spent(SweepConfig(storage=str(tmp_path), name="s", resume=True, metric="val_clip_acc", patience=1))


def test_a_time_budget_ends_the_search_then_a_resume_with_a_larger_one_goes_on_until_patience_ends_it(
    sweep_shards, quick_space, tmp_path, caplog, capsys
):
    storage = tmp_path / "sweeps"
    args = sweep_args(sweep_shards, storage, "b1", quick_space, 5, "--max-concurrent-trials", "2")
    with caplog.at_level(logging.INFO, logger="genre_sweep"):
        assert sweep_main([*args, "--time-budget", "1", "--no-retrain"]) == 0
    # one line says which rule fired; no new trial started, the two running finished their epoch: pruned, with its
    # checkpoint
    fired = [m for m in caplog.messages if m.startswith("stop rule ")]
    assert len(fired) == 1 and fired[0].startswith("stop rule --time-budget: --time-budget 1 s spent"), fired
    assert "no new trial starts" in fired[0]
    study = optuna.load_study(study_name="b1", storage=f"sqlite:///{storage / 'b1' / 'optuna.db'}")
    assert [(t.state.name, len(t.intermediate_values)) for t in study.trials] == [("PRUNED", 1)] * 2
    first = [t.user_attrs["trial"] for t in study.trials]
    for name in first:
        assert any(f"trial {name} stopped by --time-budget after 1 of" in m for m in caplog.messages)
    for result in load_results(SweepConfig(storage=str(storage), name="b1", shards=str(sweep_shards))):
        assert result.metrics["training_iteration"] == 1 and result.checkpoint is not None  # its epoch's checkpoint
        assert result.checkpoint.path.endswith(f"{result.metrics['trial_id']}/checkpoint_000000")
    ledger = load(ledger_uri(str(storage / "b1")), StoreOptions())
    assert ledger.fired["rule"] == "--time-budget" and ledger.elapsed_s >= 1.0
    for name in first:
        cost = ledger.trials[name]
        assert cost.stopped_by == "--time-budget" and cost.epochs == 1 and cost.device == "cpu"
        assert cost.gpu_hours == 0.0 and cost.cpu_hours > 0

    # the same budget again: spent already, one line, nothing started
    capsys.readouterr()
    assert sweep_main([*args, "--resume", "--time-budget", "1", "--no-retrain"]) == 2
    assert "--time-budget 1 s spent" in capsys.readouterr().err

    # a larger budget goes on (the search Tune had marked finished is open again) until patience ends it: no trial
    # can improve val_clip_acc by more than 1, so it fires when the third trial finishes, and no fifth is drawn
    caplog.clear()
    more = ["--time-budget", "1h", "--patience", "2", "--min-delta", "1", "--gpu-hour-price", "2.5"]
    with caplog.at_level(logging.INFO, logger="genre_sweep"):
        code = sweep_main([*args, "--resume", *more, "--confirm-top", "1", "--retrain-seeds", "1"])
    assert code == 0
    fired = [m for m in caplog.messages if m.startswith("stop rule ")]
    assert len(fired) == 1 and fired[0].startswith("stop rule --patience: --patience 2: the best val_clip_acc"), fired
    assert any(re.search(r"trials done, .*0 GPU-h \([\d.]+ CPU-h\) so far, projected", m) for m in caplog.messages)
    study = optuna.load_study(study_name="b1", storage=f"sqlite:///{storage / 'b1' / 'optuna.db'}")
    assert len(study.trials) == 4 and {t.state.name for t in study.trials} <= {"COMPLETE", "PRUNED"}
    ledger = load(ledger_uri(str(storage / "b1")), StoreOptions())
    assert ledger.fired["rule"] == "--patience" and len(ledger.trials) == 4 and ledger.elapsed_s > 1.0
    assert ledger.stages["confirmation"].runs == 1 and ledger.stages["test"].runs == 1

    report = storage / "b1" / "report"
    summary = (report / "summary.md").read_text()
    assert "**A stop rule ended the search:** --patience 2: the best val_clip_acc" in summary
    rows = list(csv.DictReader((report / "trials.csv").open()))
    assert {r["trial"] for r in rows} == set(ledger.trials) and {r["device"] for r in rows} == {"cpu"}
    assert all(float(r["gpu_hours"]) == 0.0 and float(r["cost"]) == 0.0 for r in rows)  # CPU trials: no GPU-hour
    # the totals are the sums: trials.csv's rows, the summary's search row, and the search with the later stages
    assert sum(float(r["cpu_hours"]) for r in rows) == pytest.approx(ledger.cpu_hours, abs=1e-5)
    search, total = (cost_row(summary, stage) for stage in ("search", "**total**"))
    assert search[0] == "4 trials" and search[3:] == ["0.0000", f"{ledger.cpu_hours:.4f}", "0.00"]
    stages = ledger.cpu_hours + ledger.stages["confirmation"].cpu_hours + ledger.stages["test"].cpu_hours
    assert total[3:] == ["0.0000", f"{stages:.4f}", "0.00"] and "at 2.5 per GPU-hour" in summary
    assert json.loads((storage / "b1-budget.json").read_text())["fired"]["rule"] == "--patience"


@pytest.mark.slow
def test_stop_at_a_loss_reached_at_once_ends_the_search_after_the_first_epochs(
    sweep_shards, quick_space, tmp_path, caplog
):
    storage = tmp_path / "sweeps"
    args = sweep_args(sweep_shards, storage, "b2", quick_space, 4, "--max-concurrent-trials", "2", "--no-retrain")
    with caplog.at_level(logging.INFO, logger="genre_sweep"):
        assert sweep_main([*args, "--metric", "val_loss", "--stop-at", "100"]) == 0  # any loss is <= 100
    fired = [m for m in caplog.messages if m.startswith("stop rule ")]
    assert len(fired) == 1, fired
    assert re.match(r"stop rule --stop-at: --stop-at 100 reached: val_loss [\d.]+ \(trial \w+, by epoch 1\)", fired[0])
    study = optuna.load_study(study_name="b2", storage=f"sqlite:///{storage / 'b2' / 'optuna.db'}")
    assert [(t.state.name, len(t.intermediate_values)) for t in study.trials] == [("PRUNED", 1)] * 2
    ledger = load(ledger_uri(str(storage / "b2")), StoreOptions())
    assert ledger.fired["rule"] == "--stop-at" and {t.stopped_by for t in ledger.trials.values()} == {"--stop-at"}
