"""The winner, confirmed rather than picked from noise: the search's top configurations, their retrains over
seeds, the choice by mean validation metric, and what the noise allows one to say about it.

Pure bookkeeping and statistics (no Ray, no torch): ``tune.retrain`` runs the retrains, ``tune.report``
writes what is decided here.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from typing import Any

from genre_sweep.model.configs import score


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One of the search's best trials: its name, folder, searched values and best epoch's score there."""

    trial: str
    folder: str
    params: dict[str, Any]
    value: float
    epoch: int
    # the recipe trial's configuration (tune.warm), to compare with: "top" when the search ranked it among its best,
    # "added" when it was confirmed besides them; "" for any other
    recipe: str = ""


@dataclasses.dataclass(frozen=True)
class Run:
    """One retrain of a candidate with one seed: its best epoch on validation, that epoch's metrics, and each
    validation clip's part in the metric there (``model.train.clip_scores``), for paired comparisons."""

    trial: str
    seed: int
    best_epoch: int
    val: dict[str, float]
    config: dict[str, Any]  # the complete TrainConfig it trained (``out`` left out)
    clips: list[float]


@dataclasses.dataclass(frozen=True)
class Noise:
    """The 95 % half-width of the difference between the chosen candidate's mean and another's: from the validation
    clips, resampled in pairs (both models judged on the same clips), and from the seeds (None with one seed);
    ``band`` combines the two in quadrature. A heuristic, on the cautious side: the seed term also holds some of
    the clips' noise."""

    clips: float
    seeds: float | None

    @property
    def band(self) -> float:
        return math.hypot(self.clips, self.seeds or 0.0)


@dataclasses.dataclass(frozen=True)
class Confirmation:
    """The candidates (search order, best first), every retrain, and the choice."""

    metric: str
    mode: str
    candidates: list[Candidate]
    runs: list[Run]
    seconds: float  # wall time of the retrains

    def runs_of(self, trial: str) -> list[Run]:
        return sorted((r for r in self.runs if r.trial == trial), key=lambda r: r.seed)

    def values(self, trial: str) -> list[float]:
        return [r.val[self.metric] for r in self.runs_of(trial)]

    def mean(self, trial: str) -> float:
        return statistics.fmean(self.values(trial))

    def std(self, trial: str) -> float:
        """The sample standard deviation over seeds (0 with one seed)."""
        values = self.values(trial)
        return statistics.stdev(values) if len(values) > 1 else 0.0

    @property
    def val_clips(self) -> int:
        return len(self.runs[0].clips)

    def _key(self, c: Candidate) -> tuple[float, int]:
        return score(self.mean(c.trial), self.mode), -self.candidates.index(c)

    @property
    def chosen(self) -> Candidate:
        """The candidate with the best mean validation metric over its seeds (a NaN is the worst); a tie goes to the
        search's order."""
        return max(self.candidates, key=self._key)

    def noise(self, trial: str) -> Noise:
        """How far the chosen one's mean and ``trial``'s may differ by chance (see ``Noise``)."""
        a, b = self.runs_of(self.chosen.trial), self.runs_of(trial)
        seeds = min(len(a), len(b))
        per_clip = [
            statistics.fmean(x.clips[i] - y.clips[i] for x, y in zip(a[:seeds], b[:seeds], strict=True))
            for i in range(self.val_clips)
        ]
        n = len(per_clip)
        clip_term = t95(n - 1) * statistics.stdev(per_clip) / math.sqrt(n) if n > 1 else math.inf
        return Noise(clip_term, welch_halfwidth(self.values(self.chosen.trial), self.values(trial)))

    @property
    def recipe(self) -> Candidate | None:
        """The recipe trial's candidate, when it was confirmed."""
        return next((c for c in self.candidates if c.recipe), None)

    def versus_recipe(self) -> dict[str, Any] | None:
        """The chosen configuration against the recipe's: their means over the seeds, the difference (chosen minus
        recipe), the noise band of that difference and whether the difference is within it; None without a recipe."""
        recipe, chosen = self.recipe, self.chosen
        if recipe is None:
            return None
        difference = self.mean(chosen.trial) - self.mean(recipe.trial)
        band = 0.0 if recipe is chosen else self.noise(recipe.trial).band
        return {
            "trial": recipe.trial,
            "chosen": chosen.trial,
            "mean": self.mean(recipe.trial),
            "chosen_mean": self.mean(chosen.trial),
            "difference": difference,
            "band": band,
            "within_noise": recipe is chosen or not abs(difference) > band,  # equal means too; NaN: noise
        }

    def within_noise(self) -> list[Candidate]:
        """The other candidates whose mean differs from the chosen one's by less than the noise."""
        chosen = self.chosen
        return [
            c
            for c in self.candidates
            if c is not chosen
            and not abs(self.mean(c.trial) - self.mean(chosen.trial)) >= self.noise(c.trial).band  # NaN: noise
        ]

    def verdict(self) -> str:
        """One paragraph: how the choice was made, and whether the data can tell the candidates apart."""
        chosen, n = self.chosen, len(self.candidates)
        if n == 1:
            return (
                "Only the search's best configuration was retrained (--confirm-top 1): nothing was compared. Its "
                "search score is the best of many trials on one validation split, which favours luck; the test "
                "figures are the ones to quote."
            )
        level = [c.trial for c in self.candidates if c is not chosen and self.mean(c.trial) == self.mean(chosen.trial)]
        how = (
            f"Chosen by the best mean validation {self.metric} ({'higher' if self.mode == 'max' else 'lower'} is "
            "better) over the seeds; a tie goes to the search's order"
            + (
                f" (here {', '.join(f'`{t}`' for t in level)} had the same mean, so that order decided)."
                if level
                else "."
            )
        )
        others = [c for c in self.candidates if c is not chosen]
        noises = {c.trial: self.noise(c.trial) for c in others}
        seeds = [x.seeds for x in noises.values()]
        parts = [
            f"the {self.val_clips} validation clips resampled in pairs, ±{max(x.clips for x in noises.values()):.3f}"
        ]
        if all(x is not None for x in seeds):
            parts.append(f"the seeds' spread (Student t), ±{max(seeds):.3f}")
        else:
            parts.append("the seeds' spread is unknown with one seed and not counted")
        noise = (
            f"the 95 % interval of each difference, up to ±{max(x.band for x in noises.values()):.3f}: "
            + "; ".join(parts)
        )
        tied = self.within_noise()
        if not tied:
            return (
                f"{how} The chosen trial `{chosen.trial}` leads every other candidate by more than the noise ({noise})."
            )
        names = ", ".join(f"`{c.trial}` ({self.mean(c.trial):.3f})" for c in tied)
        everyone = len(tied) == n - 1
        return (
            f"{how} **Within noise:** {names} {'differ' if len(tied) > 1 else 'differs'} from the chosen "
            f"`{chosen.trial}` ({self.mean(chosen.trial):.3f}) by less than the noise ({noise}): the data cannot "
            f"tell {'these configurations' if everyone else 'them'} apart, and the choice rests only on the higher "
            "mean. More validation clips or seeds would be needed to separate them."
        )


def t95(df: float) -> float:
    """The two-sided 95 % quantile of Student's t with ``df`` degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(0.975, df))


def welch_halfwidth(a: list[float], b: list[float]) -> float | None:
    """The 95 % half-width of the difference of two means over seeds (Welch's t); None when either has one seed, 0
    when the seeds agree exactly."""
    if len(a) < 2 or len(b) < 2:
        return None
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    if va + vb == 0:
        return 0.0
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return t95(df) * math.sqrt(va + vb)


def top_candidates(ranked: list[Candidate], k: int) -> list[Candidate]:
    """The first ``k`` of ``ranked`` (best first) with distinct searched values: a configuration the search drew
    twice is confirmed once."""
    out: list[Candidate] = []
    for c in ranked:
        if all(c.params != o.params for o in out):
            out.append(c)
        if len(out) == k:
            break
    return out
