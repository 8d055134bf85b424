"""The confirmation's choice and what it says about noise: pure bookkeeping, no Ray."""

import pytest

from genre_sweep.tune.confirm import Candidate, Confirmation, Run, top_candidates


def candidate(name: str, value: float, **params) -> Candidate:
    return Candidate(name, f"/sweeps/s/{name}", params or {"lr": value}, value, 3)


def confirmation(metric: str, mode: str, per_seed: dict[str, list[float]], clips: int = 100) -> Confirmation:
    candidates = [candidate(name, 0.9 - i / 100) for i, name in enumerate(per_seed)]
    runs = [
        Run(name, seed, 3, {metric: value}, {"seed": seed})
        for name, values in per_seed.items()
        for seed, value in enumerate(values)
    ]
    return Confirmation(metric, mode, candidates, runs, clips, 1.0)


def test_the_chosen_one_has_the_best_mean_over_seeds_not_the_best_search_score():
    c = confirmation("val_clip_acc", "max", {"a": [0.80, 0.70], "b": [0.85, 0.85], "c": [0.9, 0.6]})
    assert c.chosen.trial == "b" and c.mean("a") == pytest.approx(0.75) and c.std("b") == 0.0
    loss = confirmation("val_loss", "min", {"a": [0.5, 0.7], "b": [0.4, 0.45]})
    assert loss.chosen.trial == "b"  # lower is better


def test_a_tie_goes_to_the_search_order():
    assert confirmation("val_clip_acc", "max", {"a": [0.8, 0.8], "b": [0.8, 0.8]}).chosen.trial == "a"
    assert confirmation("val_clip_acc", "max", {"b": [0.8, 0.8], "a": [0.8, 0.8]}).chosen.trial == "b"


def test_differences_inside_the_validation_splits_interval_are_said_to_be_noise():
    # 20 clips: an accuracy of 0.85 is known to about +-0.15; 0.05 apart is a tie, 0.45 apart is not
    c = confirmation("val_clip_acc", "max", {"a": [0.85, 0.85], "b": [0.80, 0.80], "c": [0.40, 0.40]}, clips=20)
    assert [x.trial for x in c.within_noise()] == ["b"]
    verdict = c.verdict()
    assert "**Within noise:** `b` (0.800) differs from the chosen `a` (0.850)" in verdict
    assert "95 % interval with 20 clips, ±0.1" in verdict and "cannot tell them apart" in verdict
    # with 10,000 clips the same 0.05 is a real difference
    big = confirmation("val_clip_acc", "max", {"a": [0.85, 0.85], "b": [0.80, 0.80]}, clips=10_000)
    assert big.within_noise() == [] and "leads every other candidate by more than the noise" in big.verdict()


def test_the_seeds_spread_widens_the_noise_and_a_single_seed_loss_is_never_called_a_win():
    spread = confirmation("val_clip_acc", "max", {"a": [0.99, 0.71], "b": [0.80, 0.80]}, clips=10_000)
    assert spread.seeds_halfwidth("b") > 0.05 and [x.trial for x in spread.within_noise()] == ["b"]
    one_seed = confirmation("val_loss", "min", {"a": [0.3], "b": [0.9]})
    assert one_seed.band("b") is None and [x.trial for x in one_seed.within_noise()] == ["b"]
    assert "unknown (one seed" in one_seed.verdict()
    assert "nothing was compared" in confirmation("val_clip_acc", "max", {"a": [0.8]}).verdict()


def test_the_top_candidates_are_distinct_configurations_best_first():
    ranked = [candidate("a", 0.9, lr=1), candidate("b", 0.9, lr=1), candidate("c", 0.8, lr=2), candidate("d", 0.7)]
    assert [c.trial for c in top_candidates(ranked, 2)] == ["a", "c"]
    assert [c.trial for c in top_candidates(ranked, 9)] == ["a", "c", "d"]


def test_an_exact_tie_on_the_mean_says_the_search_order_decided():
    c = confirmation("val_clip_acc", "max", {"a": [0.8, 0.85], "b": [0.85, 0.8]}, clips=20)
    assert c.chosen.trial == "a" and "here `b` had the same mean, so that order decided" in c.verdict()
