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

Z95 = 1.96  # the normal quantile of a two-sided 95 % interval


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One of the search's best trials: its name, folder, searched values and best epoch's score there."""

    trial: str
    folder: str
    params: dict[str, Any]
    value: float
    epoch: int


@dataclasses.dataclass(frozen=True)
class Run:
    """One retrain of a candidate with one seed: its best epoch on validation and that epoch's metrics."""

    trial: str
    seed: int
    best_epoch: int
    val: dict[str, float]
    config: dict[str, Any]  # the complete TrainConfig it trained (``out`` left out)


@dataclasses.dataclass(frozen=True)
class Confirmation:
    """The candidates (search order, best first), every retrain, and the choice."""

    metric: str
    mode: str
    candidates: list[Candidate]
    runs: list[Run]
    val_clips: int  # the validation split's clips: the sample an accuracy on it is measured on
    seconds: float  # wall time of the retrains

    def runs_of(self, trial: str) -> list[Run]:
        return [r for r in self.runs if r.trial == trial]

    def values(self, trial: str) -> list[float]:
        return [r.val[self.metric] for r in self.runs_of(trial)]

    def mean(self, trial: str) -> float:
        return statistics.fmean(self.values(trial))

    def std(self, trial: str) -> float:
        """The sample standard deviation over seeds (0 with one seed)."""
        values = self.values(trial)
        return statistics.stdev(values) if len(values) > 1 else 0.0

    @property
    def chosen(self) -> Candidate:
        """The candidate with the best mean validation metric over its seeds; a tie goes to the search's order."""
        sign = 1.0 if self.mode == "max" else -1.0
        return max(self.candidates, key=lambda c: (sign * self.mean(c.trial), -self.candidates.index(c)))

    def split_halfwidth(self) -> float | None:
        """Half the 95 % interval an accuracy of the chosen one's size has on ``val_clips`` clips (Wilson): the
        validation split's own sampling error; None for a metric that is no accuracy (the loss)."""
        if not self.metric.endswith("_acc"):
            return None
        low, high = wilson(self.mean(self.chosen.trial), self.val_clips)
        return (high - low) / 2

    def seeds_halfwidth(self, trial: str) -> float | None:
        """Half the 95 % interval of the difference of two candidates' means over seeds (normal approximation), from
        the seeds' spread; None with a single seed."""
        a, b = self.runs_of(self.chosen.trial), self.runs_of(trial)
        if len(a) < 2 or len(b) < 2:
            return None
        return Z95 * math.sqrt(self.std(self.chosen.trial) ** 2 / len(a) + self.std(trial) ** 2 / len(b))

    def band(self, trial: str) -> float | None:
        """The noise a difference between the chosen one and ``trial`` must beat: the larger of the two half-widths
        above (None when neither can be told)."""
        known = [h for h in (self.split_halfwidth(), self.seeds_halfwidth(trial)) if h is not None]
        return max(known) if known else None

    def within_noise(self) -> list[Candidate]:
        """The other candidates whose mean differs from the chosen one's by less than the noise (or by an unknown
        noise: a loss measured with one seed)."""
        chosen = self.chosen
        out = []
        for c in self.candidates:
            if c is chosen:
                continue
            band = self.band(c.trial)
            if band is None or abs(self.mean(c.trial) - self.mean(chosen.trial)) < band:
                out.append(c)
        return out

    def verdict(self) -> str:
        """One paragraph: how the choice was made, and whether the data can tell the candidates apart."""
        chosen, n = self.chosen, len(self.candidates)
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
        if n == 1:
            return (
                "Only the search's best configuration was retrained (--confirm-top 1): nothing was compared. Its "
                "search score is the best of many trials on one validation split, which favours luck; the test "
                "figures are the ones to quote."
            )
        split = self.split_halfwidth()
        parts = []
        if split is not None:
            parts.append(f"the validation split's 95 % interval with {self.val_clips} clips, ±{split:.3f}")
        seeds = [h for c in self.candidates if c is not chosen and (h := self.seeds_halfwidth(c.trial)) is not None]
        if seeds:
            parts.append(f"the seeds' spread, ±{max(seeds):.3f} at most")
        noise = " and ".join(parts) if parts else "unknown (one seed, and the loss has no binomial interval)"
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


def wilson(accuracy: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The 95 % Wilson score interval of an accuracy measured on ``n`` independent items."""
    if n == 0:
        return 0.0, 1.0
    centre = (accuracy + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(accuracy * (1 - accuracy) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)
