"""The sweep's console output: one line when a trial starts, one when it ends, with the best trial so far.

Tune's own console boxes (every trial's config and result, every 30 s the whole table) make a 10-trial
sweep hundreds of lines; they are off, and this callback says what matters in order. Each epoch's line
comes from the trial itself (``genre_sweep.model.train``); the Ray dashboard, TensorBoard and
optuna-dashboard keep the full picture.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from ray import tune

from genre_sweep.model.configs import score
from genre_sweep.store import StoreOptions, storage_full
from genre_sweep.tune import budget, internals, preemption
from genre_sweep.tune.state import COPY_EVERY_S, keep_whole_copies
from genre_sweep.tune.trial import TRIAL_ERROR

log = logging.getLogger(__name__)


# Set when a trial failed because the storage is full (after its own retries rode out a short spell): the sweep
# is stopped as by Ctrl-C, its state kept, and says so in one line. Module-wide: a resumed Tuner runs the
# unpickled copy of this callback, not one the driver holds.
STORAGE_FULL = threading.Event()


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


class SweepProgress(tune.Callback):
    def __init__(
        self,
        metric: str,
        mode: str,
        trials: int,
        default_epochs: int,
        root: str,
        options: StoreOptions,
        stopper: str = "ASHA",
    ) -> None:
        self.metric, self.mode, self.trials, self.default_epochs = metric, mode, trials, default_epochs
        self.stopper = stopper  # what stops trials early (--scheduler), as the end-of-trial line names it
        self.root, self.options = root, options  # the sweep's folder, whose Tune state gets a whole copy kept
        self.copied = 0.0  # when it was last copied (monotonic)
        self.started = self.done = 0
        self.best: tuple[float, str] | None = None  # (best epoch's metric, trial id)
        self.start_times: dict[str, float] = {}  # when Tune's controller first had each trial (wall clock)
        self.overheads: dict[str, float] = {}  # from Tune's start of a trial to its first optimizer step, s

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        # Tune calls on_trial_start once a trial's actor is up; a trial is seen here first, pending, as soon as
        # Tune has created it, so its actor's start and imports count in its overhead too
        now = time.time()
        for trial in trials:
            self.start_times.setdefault(trial.trial_id, now)
        if time.monotonic() - self.copied >= COPY_EVERY_S:  # a whole copy of Tune's state, should a disk fill
            keep_whole_copies(self.root, self.options)
            self.copied = time.monotonic()

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.started += 1
        self.start_times.setdefault(trial.trial_id, time.time())
        config = ", ".join(f"{k}={_short(v)}" for k, v in sorted(trial.config.items()))
        log.info("trial %s started (%d of %d): %s", trial.trial_id, self.started, self.trials, config)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if "preempted_node" in result:  # its first epoch since it moved off a node being preempted
            log.warning("%s", preemption.moved_line(trial.trial_id, result))
        started = self.start_times.get(trial.trial_id)
        if "first_step_at" in result and started is not None and trial.trial_id not in self.overheads:
            self.overheads[trial.trial_id] = result["first_step_at"] - started

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if self.overheads:
            values = list(self.overheads.values())
            log.info(
                "per-trial overhead, from Tune's start of a trial (its actor's start, imports, model load, data and "
                "cache mapping included) to its first optimizer step: median %.2f s, max %.2f s over %d trials",
                statistics.median(values),
                max(values),
                len(values),
            )

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.done += 1
        if TRIAL_ERROR in trial.last_result:
            log.warning(
                "trial %s failed: %s (not retried: the same configuration fails again; the study holds it as FAIL); "
                "%d of %d trials done",
                trial.trial_id,
                trial.last_result[TRIAL_ERROR],
                self.done,
                self.trials,
            )
            return
        epochs = int(trial.last_result.get("training_iteration", 0))
        planned = int(trial.config.get("num_train_epochs", self.default_epochs))
        value = trial.metric_analysis.get(self.metric, {}).get(self.mode)
        if value is not None and (self.best is None or score(value, self.mode) > score(self.best[0], self.mode)):
            self.best = (value, trial.trial_id)
        stopper = getattr(self, "stopper", "ASHA")  # (absent from a callback pickled before it existed)
        stopper = budget.stopped_by(trial.trial_id) or stopper  # a stop rule's, once one fired (tune/budget.py)
        how = "complete" if epochs >= planned else f"stopped by {stopper} after {epochs} of {planned} epochs"
        best = f"best so far {self.best[0]:.3f} (trial {self.best[1]})" if self.best else "no result yet"
        shown = "none" if value is None else f"{value:.3f}"
        overhead = self.overheads.get(trial.trial_id)
        cost = budget.progress_note(self.trials)  # GPU-hours so far, and projected for all trials
        log.info(
            "trial %s %s: best %s %s; %d of %d trials done, %s%s%s",
            trial.trial_id,
            how,
            self.metric,
            shown,
            self.done,
            self.trials,
            best,
            "" if overhead is None else f" (its first step came {overhead:.1f} s after Tune started it)",
            f"; {cost}" if cost else "",
        )

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any) -> None:
        # the driver now holds this epoch's checkpoint: a trial lost from here on resumes from it
        epoch = int((trial.last_result or {}).get("training_iteration", 0))
        log.debug("trial %s: checkpoint of epoch %d kept", trial.trial_id, epoch)

    def _storage_filled(self, trial: Any) -> bool:
        """Whether ``trial`` failed for want of space (after its own retries rode out a short spell): then the
        sweep is stopped as by Ctrl-C, its state kept, the trials resumable."""
        error = Path(trial.error_file).read_text() if trial.error_file and Path(trial.error_file).exists() else None
        if not storage_full(error):
            return False
        if not STORAGE_FULL.is_set():
            log.error("trial %s could not write: a disk is full (see its error); stopping the sweep", trial.trial_id)
            STORAGE_FULL.set()
            internals.request_tune_stop()
        return True

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self._storage_filled(trial):
            return
        # a preemption is the one error Tune retries without counting (the error file keeps every earlier error)
        counted = getattr(self, "failures_seen", {})  # (absent from a callback pickled before it existed)
        self.failures_seen = counted
        if trial.num_failures == counted.get(trial.trial_id, 0):  # its own line said where it stopped
            log.info("trial %s: waiting for a node that is not being preempted", trial.trial_id)
            return
        counted[trial.trial_id] = trial.num_failures
        epoch = int((trial.last_result or {}).get("training_iteration", 0))
        where = f"its checkpoint of epoch {epoch}" if trial.checkpoint is not None else "its start (no checkpoint yet)"
        log.warning("trial %s failed (failure %d); retrying it from %s", trial.trial_id, trial.num_failures, where)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self._storage_filled(trial):
            return
        log.warning(
            "trial %s failed %d times, --max-failures retries spent: see %s",
            trial.trial_id,
            trial.num_failures,
            trial.path,
        )
