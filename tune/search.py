"""The sweep's searcher and scheduler, with the two fixes the stock Ray classes need.

- ``PruneAwareOptunaSearch``: a trial that ASHA stopped before its own epoch count is told to the
  Optuna study as PRUNED (with its per-epoch intermediate values), not as COMPLETE with a low-budget
  score, which would mislead TPE.
- ``PersistentASHA``: ASHA whose rungs (every trial's recorded score at every milestone) and
  trial-to-bracket assignment are written as JSON after each change and reloaded on resume; Tune does
  not save scheduler state on its own.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from optuna.trial import TrialState
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from genre_sweep.store import StoreOptions, filesystem, write_bytes
from genre_sweep.tune import internals

log = logging.getLogger(__name__)


class PruneAwareOptunaSearch(OptunaSearch):
    """OptunaSearch that records scheduler-stopped trials as pruned.

    A trial's planned epoch count is noted when it is suggested (``default_epochs`` when the space
    does not search it); a trial that ends, without error, before that count was stopped by the
    scheduler and is told PRUNED. A complete trial is told its best epoch's value. The last epoch's
    value (which Tune hands to ``on_trial_complete``, not ``on_trial_result``) is reported too.
    """

    def __init__(self, *args: Any, default_epochs: int, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._default_epochs = default_epochs
        self._planned: dict[str, int] = {}
        self._best: dict[str, float] = {}
        self._reported: dict[str, set[int]] = {}  # epochs already reported to each trial's Optuna trial

    def suggest(self, trial_id: str) -> dict | None:
        config = super().suggest(trial_id)
        if config is not None:
            self._planned[trial_id] = int(config.get("num_train_epochs", self._default_epochs))
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        super().on_trial_result(trial_id, result)
        value = result.get(self.metric)
        if value is not None:
            self._best[trial_id] = max(value, self._best.get(trial_id, value))
            self._reported.setdefault(trial_id, set()).add(result.get("training_iteration"))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        ot_trial, completed = internals.optuna_trial(self, trial_id), internals.completed_trials(self)
        if error or not result or ot_trial is None or trial_id in completed:
            super().on_trial_complete(trial_id, result, error)
            return
        done, value = result.get("training_iteration", 0), result.get(self.metric)
        if value is not None and done not in self._reported.get(trial_id, ()):
            ot_trial.report(value, done)  # the last epoch, where Tune passed it here and not to on_trial_result
            self._best[trial_id] = max(value, self._best.get(trial_id, value))
        study = internals.optuna_study(self)
        if done < self._planned.get(trial_id, done):
            study.tell(ot_trial, state=TrialState.PRUNED)
        else:  # a trial's score is its best epoch, the one training keeps
            study.tell(ot_trial, self._best.get(trial_id))
        completed.add(trial_id)


class PersistentASHA(ASHAScheduler):
    """ASHA that keeps its rung state in a JSON file (local or s3://) and reloads it on resume."""

    def __init__(self, state_uri: str, options: StoreOptions, **kwargs: Any):
        super().__init__(**kwargs)
        self._state_uri, self._options = state_uri, options
        self._saved_brackets: dict[str, int] = {}

    def restore_state(self) -> bool:
        """Load saved rungs if the state file exists; True if it did."""
        fs, path = filesystem(self._state_uri, self._options)
        try:
            with fs.open_input_stream(path) as f:
                state = json.loads(f.read())
        except FileNotFoundError:
            return False
        brackets = internals.asha_brackets(self)
        if len(state["rungs"]) != len(brackets):
            raise ValueError(f"{self._state_uri}: saved ASHA state has another bracket count")
        for bracket, rungs in zip(brackets, state["rungs"], strict=True):
            internals.set_bracket_rungs(bracket, {float(m): recorded for m, recorded in rungs})
        self._saved_brackets = state["trial_bracket"]
        log.info("ASHA state restored from %s (%d trials)", self._state_uri, len(self._saved_brackets))
        return True

    def _save(self) -> None:
        brackets = internals.asha_brackets(self)
        index = {id(b): i for i, b in enumerate(brackets)}
        assigned = {tid: index[id(b)] for tid, b in internals.trial_brackets(self).items()}
        state = {
            "rungs": [[[m, recorded] for m, recorded in internals.bracket_rungs(b)] for b in brackets],
            "trial_bracket": {**self._saved_brackets, **assigned},
        }
        data = json.dumps(state).encode()
        for attempt, wait in enumerate((1.0, 2.0, 4.0, None), start=1):
            try:
                fs, path = filesystem(self._state_uri, self._options)
                write_bytes(fs, path, data)
                return
            except OSError as e:  # a store that is briefly unreachable must not end the sweep
                if wait is None:
                    log.warning("ASHA state not saved to %s (%s); the next decision saves it again", self._state_uri, e)
                    return
                log.warning(
                    "ASHA state: writing %s failed (%s); attempt %d, retrying in %g s",
                    self._state_uri,
                    e,
                    attempt,
                    wait,
                )
                time.sleep(wait)

    def on_trial_add(self, tune_controller, trial) -> None:
        if trial.trial_id in self._saved_brackets:
            bracket = internals.asha_brackets(self)[self._saved_brackets[trial.trial_id]]
            internals.trial_brackets(self)[trial.trial_id] = bracket
            return
        super().on_trial_add(tune_controller, trial)
        self._save()

    def on_trial_result(self, tune_controller, trial, result):
        decision = super().on_trial_result(tune_controller, trial, result)
        self._save()
        return decision

    def on_trial_complete(self, tune_controller, trial, result) -> None:
        super().on_trial_complete(tune_controller, trial, result)
        self._save()
