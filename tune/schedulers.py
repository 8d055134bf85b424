"""The sweep's trial schedulers (``--scheduler``), each of whose state survives ``--resume``.

- ``asha`` (the default): asynchronous successive halving by epoch (``PersistentASHA``, one bracket).
- ``hyperband``: asynchronous Hyperband, ASHA with up to ``HYPERBAND_BRACKETS`` brackets, each stopping trials
  from a later rung on (a trial's bracket is drawn as it starts); as many brackets as ``max_t / grace_period``
  leaves rungs for at ``reduction_factor``.
- ``median``: the median stopping rule (``PersistentMedian``): after ``grace_period`` epochs, a trial whose best
  value so far is worse than the median of the other trials' running means at that epoch is stopped (once at
  least 3 trials have got that far).
- ``none``: no early stopping (Tune's FIFO): every trial trains all its epochs.

Tune saves no scheduler's state. ASHA's and Hyperband's rungs, and the median rule's per-trial results, are written
as JSON beside the sweep after each decision and read back on ``--resume`` (``restore_state``); ASHA keeps the file
name it always had, ``<storage>/<name>-asha-state.json``, so sweeps started before keep resuming with their rungs.
Whatever stops a trial, the study records it as PRUNED (``search.PruneAwareOptunaSearch``: fewer epochs than planned).
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

import numpy as np
from ray.tune.schedulers import FIFOScheduler, MedianStoppingRule, TrialScheduler

from genre_sweep.config import ConfigError
from genre_sweep.store import StoreOptions
from genre_sweep.tune import internals
from genre_sweep.tune.configs import SCHEDULERS, SweepConfig
from genre_sweep.tune.search import PersistentASHA, read_state, write_state
from genre_sweep.tune.trial import TRIAL_ERROR

log = logging.getLogger(__name__)

TIME_ATTR = "training_iteration"  # every scheduler counts a trial's time in epochs
HYPERBAND_BRACKETS = 3
# what each scheduler is called in the progress lines and messages
LABELS = {"asha": "ASHA", "hyperband": "Hyperband", "median": "the median stopping rule", "none": "no scheduler"}
# the flags each scheduler reads; another scheduler given one of them is refused
USES = {
    "grace_period": ("asha", "hyperband", "median"),
    "reduction_factor": ("asha", "hyperband"),
    "max_t": ("asha", "hyperband"),
}


def label(scheduler: str | None) -> str:
    """What ``scheduler`` (a sweep record's setting; None: one recorded before there was a choice, ASHA) is called."""
    return LABELS[scheduler or "asha"]


def state_uri(root: str, scheduler: str) -> str:
    """Where the scheduler's state is kept: beside the sweep's folder, not in it (a resumed Tune re-uploads its stale
    copy of that folder). ASHA's file keeps its name, so sweeps started before resume with their rungs."""
    return root + ("-asha-state.json" if scheduler == "asha" else "-scheduler-state.json")


def refuse_unused_flags(cfg: SweepConfig) -> None:
    """A new sweep's ``--scheduler`` given a flag it does not read (``cfg`` as given, before its defaults are filled
    in) is a ConfigError naming the schedulers that read it: it would be recorded, and would do nothing."""
    scheduler = cfg.scheduler or "asha"
    for name, users in USES.items():
        if getattr(cfg, name) is not None and scheduler not in users:
            raise ConfigError(
                f"--{name.replace('_', '-')} has no effect with --scheduler {scheduler}; only "
                f"{', '.join(users[:-1])} and {users[-1]} read it: leave it out, or choose one of those"
            )


def hyperband_brackets(grace_period: int, reduction_factor: float, max_t: int) -> int:
    """Hyperband's bracket count: ``HYPERBAND_BRACKETS``, or fewer where ``max_t / grace_period`` leaves no rung for
    more (Ray's bracket ``s`` has ``int(log(max_t / grace) / log(factor) - s + 1)`` rungs; an empty one would stop
    nothing)."""
    rungs = int(np.log(max_t / grace_period) / np.log(reduction_factor) + 1)
    return max(1, min(HYPERBAND_BRACKETS, rungs))


def make_scheduler(cfg: SweepConfig) -> TrialScheduler:
    """``cfg.scheduler``, resolved against the sweep record (metric and mode come from ``TuneConfig``, restored with
    the Tuner, so Tune's table and ResultGrid know them too)."""
    scheduler, uri = cfg.scheduler or "asha", state_uri(cfg.root, cfg.scheduler or "asha")
    if scheduler in ("asha", "hyperband"):
        brackets = 1
        if scheduler == "hyperband":
            brackets = hyperband_brackets(cfg.grace_period, cfg.reduction_factor, cfg.max_t)
            log.info("scheduler: asynchronous Hyperband, %d brackets", brackets)
        return PersistentASHA(
            state_uri=uri,
            options=cfg.options,
            time_attr=TIME_ATTR,
            grace_period=cfg.grace_period,
            reduction_factor=cfg.reduction_factor,
            max_t=cfg.max_t,
            brackets=brackets,
        )
    if scheduler == "median":
        return PersistentMedian(state_uri=uri, options=cfg.options, grace_period=cfg.grace_period)
    if scheduler == "none":
        return FIFOScheduler()
    raise ValueError(f"unknown scheduler {scheduler!r}; one of {', '.join(SCHEDULERS)}")


def restore_state(scheduler: TrialScheduler) -> bool:
    """Load a resumed sweep's scheduler state, where the scheduler keeps one; True if it did."""
    restore = getattr(scheduler, "restore_state", None)
    return bool(restore()) if restore is not None else False


class PersistentMedian(MedianStoppingRule):
    """The median stopping rule by epoch, whose per-trial results are written as JSON (local or s3://) after each
    decision and reloaded on resume.

    It never pauses a trial (Ray's rule yields a trial to pending ones while too few trials compare; ours would
    checkpoint, stop and restart for nothing), and a trial that runs an epoch again (resumed from an older checkpoint)
    replaces that epoch's result instead of counting it twice.
    """

    def __init__(self, state_uri: str, options: StoreOptions, grace_period: int, min_samples_required: int = 3):
        super().__init__(
            time_attr=TIME_ATTR,
            grace_period=grace_period,
            min_samples_required=min_samples_required,
            min_time_slice=math.inf,  # never "insufficient samples: yield": time - last pause > inf is never true
        )
        self._state_uri, self._options = state_uri, options

    def restore_state(self) -> bool:
        """Load the saved results if the state file exists and reads; True if it did. A damaged file is a warning:
        the rule then compares resumed trials only with those still to come."""
        raw = read_state(self._state_uri, self._options, "scheduler state")
        if raw is None:
            return False
        try:
            state = json.loads(raw)
            metric = str(state["metric"])
            saved = {
                str(tid): [{TIME_ATTR: float(t), metric: float(v)} for t, v in results]
                for tid, results in state["results"].items()
                if results  # (Ray reads each trial's last result)
            }
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            log.warning(
                "scheduler state %s is unreadable (%s): resuming with no results, so trials resumed now are compared "
                "only with later ones",
                self._state_uri,
                e,
            )
            return False
        internals.median_results(self).update(saved)  # keyed by trial id until Tune adds each trial back
        log.info("median stopping state restored from %s (%d trials)", self._state_uri, len(saved))
        return True

    def _save(self) -> None:
        metric = internals.median_metric(self)
        results = {
            _trial_id(trial): [[r[TIME_ATTR], r[metric]] for r in history if TIME_ATTR in r and metric in r]
            for trial, history in internals.median_results(self).items()
        }
        state = {"scheduler": "median", "metric": metric, "results": results}
        write_state(self._state_uri, self._options, state, "scheduler state")

    def _replace_epoch(self, trial: Any, result: dict) -> None:
        """Drop ``trial``'s results from ``result``'s epoch on: the epoch is run (or ends) again."""
        results = internals.median_results(self)
        if trial in results and TIME_ATTR in result:
            results[trial] = [r for r in results[trial] if r.get(TIME_ATTR, -1) < result[TIME_ATTR]]

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        super().on_trial_add(tune_controller, trial)
        results = internals.median_results(self)
        if trial.trial_id in results:  # a restored trial: its saved results are its own again
            results[trial] = results.pop(trial.trial_id)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if TRIAL_ERROR in result:  # a configuration that cannot train: it stops, and its NaN is never recorded
            return self.STOP
        self._replace_epoch(trial, result)
        decision = super().on_trial_result(tune_controller, trial, result)
        self._save()
        return decision

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        if TRIAL_ERROR in result:
            internals.median_results(self).pop(trial, None)
        else:
            self._replace_epoch(trial, result)
            super().on_trial_complete(tune_controller, trial, result)
        self._save()


def _trial_id(trial: Any) -> str:
    """A results key's trial id: a Tune ``Trial``'s, or the id a restored trial is kept under until Tune adds it."""
    return trial if isinstance(trial, str) else trial.trial_id
