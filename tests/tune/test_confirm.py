"""The confirmation's choice and what it says about noise: pure bookkeeping, no Ray."""

import pytest

from genre_sweep.tune.confirm import Candidate, Confirmation, Run, top_candidates


def candidate(name: str, value: float, **params) -> Candidate:
    return Candidate(name, f"/sweeps/s/{name}", params or {"lr": value}, value, 3)


def right_clips(accuracy: float, clips: int) -> list[float]:
    """Per-clip scores of an accuracy on ``clips`` clips: the first ``round(accuracy * clips)`` right."""
    right = round(accuracy * clips)
    return [1.0] * right + [0.0] * (clips - right)


def confirmation(metric: str, mode: str, per_seed: dict[str, list[float]], clips: int = 100) -> Confirmation:
    """Candidates scored ``per_seed`` by ``metric``; an accuracy's clips are right from the first on (so two
    models' right clips overlap as much as they can: the paired comparison's least noisy case)."""
    candidates = [candidate(name, 0.9 - i / 100) for i, name in enumerate(per_seed)]
    runs = [
        Run(name, seed, 3, {metric: value}, {"seed": seed}, right_clips(value, clips) if "acc" in metric else [value])
        for name, values in per_seed.items()
        for seed, value in enumerate(values)
    ]
    return Confirmation(metric, mode, candidates, runs, 1.0)


def test_the_chosen_one_has_the_best_mean_over_seeds_not_the_best_search_score():
    c = confirmation("val_clip_acc", "max", {"a": [0.80, 0.70], "b": [0.85, 0.85], "c": [0.9, 0.6]})
    assert c.chosen.trial == "b" and c.mean("a") == pytest.approx(0.75) and c.std("b") == 0.0
    loss = confirmation("val_loss", "min", {"a": [0.5, 0.7], "b": [0.4, 0.45]})
    assert loss.chosen.trial == "b"  # lower is better


def test_a_tie_goes_to_the_search_order():
    assert confirmation("val_clip_acc", "max", {"a": [0.8, 0.8], "b": [0.8, 0.8]}).chosen.trial == "a"
    assert confirmation("val_clip_acc", "max", {"b": [0.8, 0.8], "a": [0.8, 0.8]}).chosen.trial == "b"


def test_differences_inside_the_paired_clip_interval_are_said_to_be_noise():
    # 20 clips, the seeds agree: 17 right against 16 (one clip apart) is a tie; 17 against 8 is not
    c = confirmation("val_clip_acc", "max", {"a": [0.85, 0.85], "b": [0.80, 0.80], "c": [0.40, 0.40]}, clips=20)
    assert [x.trial for x in c.within_noise()] == ["b"]
    noise = c.noise("b")  # one clip of 20 differs: d = 1 there, 0 elsewhere; t(19) x sd(d) / sqrt(20)
    sd = (0.05 * 0.95 * 20 / 19) ** 0.5
    assert noise.seeds == 0.0 and noise.clips == pytest.approx(2.093 * sd / 20**0.5, rel=1e-3)
    verdict = c.verdict()
    assert "**Within noise:** `b` (0.800) differs from the chosen `a` (0.850)" in verdict
    assert "the 20 validation clips resampled in pairs" in verdict and "cannot tell them apart" in verdict
    # on 2,000 clips the same 0.05 (100 clips) is a real difference
    big = confirmation("val_clip_acc", "max", {"a": [0.85, 0.85], "b": [0.80, 0.80]}, clips=2_000)
    assert big.within_noise() == [] and "leads every other candidate by more than the noise" in big.verdict()


def test_the_seeds_spread_counts_with_students_t_and_one_seed_is_said_to_be_unknown():
    from genre_sweep.tune.confirm import welch_halfwidth

    # two seeds each with equal spreads: Welch gives df 2, t = 4.303
    assert welch_halfwidth([0.8, 0.9], [0.7, 0.8]) == pytest.approx(4.303 * (0.005 / 2 + 0.005 / 2) ** 0.5, rel=1e-3)
    assert welch_halfwidth([0.8], [0.7, 0.8]) is None and welch_halfwidth([0.8, 0.8], [0.7, 0.7]) == 0.0
    # 0.1 apart on 2,000 clips, but two seeds that disagree by 0.2 each: the seeds make it a tie
    spread = confirmation("val_clip_acc", "max", {"a": [0.95, 0.75], "b": [0.80, 0.70]}, clips=2_000)
    assert spread.noise("b").seeds > 0.1 and [x.trial for x in spread.within_noise()] == ["b"]
    one_seed = confirmation("val_clip_acc", "max", {"a": [0.9], "b": [0.3]}, clips=20)
    assert one_seed.noise("b").seeds is None and one_seed.within_noise() == []
    assert "the seeds' spread is unknown with one seed and not counted" in one_seed.verdict()
    assert "nothing was compared" in confirmation("val_clip_acc", "max", {"a": [0.8]}).verdict()


def test_a_nan_mean_is_never_chosen():
    c = confirmation("val_loss", "min", {"a": [float("nan"), 0.5], "b": [0.9, 0.9]})
    assert c.chosen.trial == "b"


def test_the_top_candidates_are_distinct_configurations_best_first():
    ranked = [candidate("a", 0.9, lr=1), candidate("b", 0.9, lr=1), candidate("c", 0.8, lr=2), candidate("d", 0.7)]
    assert [c.trial for c in top_candidates(ranked, 2)] == ["a", "c"]
    assert [c.trial for c in top_candidates(ranked, 9)] == ["a", "c", "d"]


def test_an_exact_tie_on_the_mean_says_the_search_order_decided():
    c = confirmation("val_clip_acc", "max", {"a": [0.8, 0.85], "b": [0.85, 0.8]}, clips=20)
    assert c.chosen.trial == "a" and "here `b` had the same mean, so that order decided" in c.verdict()
