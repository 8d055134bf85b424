"""The sweep's searcher and scheduler, with the two fixes the stock Ray classes need.

- ``PruneAwareOptunaSearch``: a trial that ASHA stopped before its own epoch count is told to the
  Optuna study as PRUNED (with its per-epoch intermediate values), not as COMPLETE with a low-budget
  score, which would mislead TPE; a trial whose configuration cannot train is told FAIL once, with its
  reason; a trial the study already holds as finished (told by a driver killed before Tune's next
  snapshot) is never told again. Each study trial carries the trial's one name, its folder, and its
  best and last epochs' values as user attributes.
- ``PersistentASHA``: ASHA whose rungs (every trial's recorded score at every milestone) and
  trial-to-bracket assignment are written as JSON after each change and reloaded on resume; Tune does
  not save scheduler state on its own.
"""

from __future__ import annotations

import json
import logging
import warnings
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from genre_sweep.model.train import better
from genre_sweep.store import StoreError, StoreOptions, read_bytes, with_retries, write_to
from genre_sweep.tune import budget, internals
from genre_sweep.tune.study import StudyBackup
from genre_sweep.tune.trial import TRIAL_ERROR

log = logging.getLogger(__name__)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


class PruneAwareOptunaSearch(OptunaSearch):
    """OptunaSearch that records scheduler-stopped trials as pruned.

    A trial's planned epoch count is noted when it is suggested (``default_epochs`` when the space
    does not search it); a trial that ends, without error, before that count was stopped by the
    scheduler and is told PRUNED. A complete trial is told its best epoch's value (best by the metric and
    mode); a pruned one's value is its last epoch's (Optuna's rule), so both are user attributes too. The last
    epoch's value (which Tune hands to ``on_trial_complete``, not ``on_trial_result``) is reported too.
    """

    def __init__(
        self,
        *args: Any,
        default_epochs: int,
        trials_root: str,
        backup: StudyBackup | None = None,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self._default_epochs = default_epochs
        self._trials_root = trials_root  # the sweep's folder: a trial's folder is <root>/<its name>
        self._backup = backup  # copies a SQLite study to the sweep's storage after each finished trial
        self._planned: dict[str, int] = {}
        self._best: dict[str, tuple[int, dict]] = {}  # each trial's best epoch so far: (epoch, its metrics)
        self._reported: dict[str, set[int]] = {}  # epochs already reported to each trial's Optuna trial
        with warnings.catch_warnings():  # "experimental" since Optuna 3.2, and what optuna-dashboard reads
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            internals.optuna_study(self).set_metric_names([self.metric])  # optuna-dashboard names the objective

    def suggest(self, trial_id: str) -> dict | None:
        if budget.stopping():  # a stop rule fired: no new trial (None: not now; the search is not finished)
            return None
        config = super().suggest(trial_id)
        if config is not None:
            self._planned[trial_id] = int(config.get("num_train_epochs", self._default_epochs))
            ot_trial = internals.optuna_trial(self, trial_id)
            ot_trial.set_user_attr("trial", trial_id)  # the trial's name (sweep.trial_name) and its folder
            ot_trial.set_user_attr("folder", f"{self._trials_root}/{trial_id}")
        return config

    def _note(self, trial_id: str, result: dict) -> None:
        """Keep ``result`` as the trial's best epoch when it beats the best so far by the rule training keeps its
        weights by (``model.train.better``: the metric, then the validation loss, the earlier epoch on a tie)."""
        best = self._best.get(trial_id)
        if better(result, best[1] if best else None, self.metric, self.mode):
            kept = {k: result.get(k) for k in (self.metric, "val_loss", "val_clip_acc")}
            self._best[trial_id] = (result.get("training_iteration"), kept)

    def told_before(self, trial_id: str) -> bool:
        """True when the study already holds this trial as finished: a driver told it, then was killed before
        Tune's next snapshot of this searcher, so the resumed sweep runs it again. Telling a finished Optuna
        trial anything raises, and it must not be counted twice: its results are ignored."""
        told = self.__dict__.setdefault("_told_before", set())  # (absent from snapshots taken before it existed)
        if trial_id in told:
            return True
        ot_trial = internals.optuna_trial(self, trial_id)
        if ot_trial is None:
            return False
        finished = internals.optuna_study(self).get_trials(deepcopy=False, states=FINISHED)
        if any(t.number == ot_trial.number for t in finished):
            told.add(trial_id)
            internals.completed_trials(self).add(trial_id)
            log.info(
                "trial %s is already finished in the study (study trial %d): not told again", trial_id, ot_trial.number
            )
            return True
        return False

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if self.told_before(trial_id) or TRIAL_ERROR in result:
            return
        with warnings.catch_warnings():
            # a trial resumed from a checkpoint older than its last report (a stopped or killed driver) runs those
            # epochs again; the study keeps each epoch's first value, and Optuna's warning about it is expected
            warnings.filterwarnings("ignore", message=r".*is already reported")
            super().on_trial_result(trial_id, result)
        value = result.get(self.metric)
        if value is not None:
            self._note(trial_id, result)
            self._reported.setdefault(trial_id, set()).add(result.get("training_iteration"))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if self.told_before(trial_id):
            return
        ot_trial, completed = internals.optuna_trial(self, trial_id), internals.completed_trials(self)
        if error or not result or ot_trial is None or trial_id in completed:
            super().on_trial_complete(trial_id, result, error)
        elif TRIAL_ERROR in result:  # its configuration cannot train: FAIL, with why, once
            ot_trial.set_user_attr("fail_reason", result[TRIAL_ERROR])
            internals.optuna_study(self).tell(ot_trial, state=TrialState.FAIL)
            completed.add(trial_id)
        else:
            self._tell(trial_id, result, ot_trial)
            completed.add(trial_id)
        if getattr(self, "_backup", None) is not None:
            self._backup.save()

    def _tell(self, trial_id: str, result: dict, ot_trial: Any) -> None:
        done, value = result.get("training_iteration", 0), result.get(self.metric)
        if value is not None and done not in self._reported.get(trial_id, ()):
            ot_trial.report(value, done)  # the last epoch, where Tune passed it here and not to on_trial_result
            self._note(trial_id, result)
        best = self._best.get(trial_id)
        if best is not None:
            ot_trial.set_user_attr("best_value", best[1][self.metric])
            ot_trial.set_user_attr("best_epoch", best[0])
        if value is not None:
            ot_trial.set_user_attr("last_value", value)
            ot_trial.set_user_attr("last_epoch", done)
        study = internals.optuna_study(self)
        if done < self._planned.get(trial_id, done):
            study.tell(ot_trial, state=TrialState.PRUNED)  # Optuna makes the last epoch's value its value
        else:  # a trial's score is its best epoch, the one training keeps
            study.tell(ot_trial, None if best is None else best[1][self.metric])


def read_state(uri: str, options: StoreOptions, what: str) -> bytes | None:
    """A scheduler's saved state (``what`` names it in errors), or None when none was saved yet."""
    try:
        return read_bytes(uri, options)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StoreError(f"cannot read the {what} {uri}: {e}") from e


def write_state(uri: str, options: StoreOptions, state: dict[str, Any], what: str) -> None:
    """Write a scheduler's state whole. A store that is briefly unreachable must not end the sweep: the write is
    retried a few times, then skipped with a warning, and the next decision saves it again."""
    with_retries(
        lambda: write_to(uri, json.dumps(state).encode(), options),
        f"write the {what} {uri}",
        waits=(1.0, 2.0, 4.0),
        fatal=False,
    )


class PersistentASHA(ASHAScheduler):
    """ASHA that keeps its rung state in a JSON file (local or s3://) and reloads it on resume."""

    def __init__(self, state_uri: str, options: StoreOptions, **kwargs: Any):
        super().__init__(**kwargs)
        self._state_uri, self._options = state_uri, options
        self._saved_brackets: dict[str, int] = {}

    def restore_state(self) -> bool:
        """Load saved rungs if the state file exists and reads; True if it did.

        A damaged file (truncated by a kill mid-write in versions that wrote in place, or edited) is not a
        reason to lose the sweep: the rungs start empty, with a warning, and ASHA compares the resumed
        trials only with those still to come.
        """
        raw = read_state(self._state_uri, self._options, "ASHA state")
        if raw is None:
            return False
        brackets = internals.asha_brackets(self)
        try:
            state = json.loads(raw)
            rungs = [{float(m): dict(recorded) for m, recorded in bracket} for bracket in state["rungs"]]
            saved_brackets = {str(k): int(v) for k, v in state["trial_bracket"].items()}
            if len(rungs) != len(brackets):
                raise ValueError(f"{len(rungs)} brackets saved, {len(brackets)} configured")
        except (ValueError, KeyError, TypeError) as e:
            log.warning(
                "ASHA state %s is unreadable (%s): resuming with empty rungs, so trials resumed now are compared "
                "only with later ones",
                self._state_uri,
                e,
            )
            return False
        for bracket, bracket_rungs in zip(brackets, rungs, strict=True):
            internals.set_bracket_rungs(bracket, bracket_rungs)
        self._saved_brackets = saved_brackets
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
        write_state(self._state_uri, self._options, state, "ASHA state")

    def on_trial_add(self, tune_controller, trial) -> None:
        if trial.trial_id in self._saved_brackets:
            bracket = internals.asha_brackets(self)[self._saved_brackets[trial.trial_id]]
            internals.trial_brackets(self)[trial.trial_id] = bracket
            return
        super().on_trial_add(tune_controller, trial)
        self._save()

    def on_trial_result(self, tune_controller, trial, result):
        if TRIAL_ERROR in result:  # a configuration that cannot train: it stops, and its NaN is never recorded
            return self.STOP
        decision = super().on_trial_result(tune_controller, trial, result)
        self._save()
        return decision

    def on_trial_complete(self, tune_controller, trial, result) -> None:
        if TRIAL_ERROR in result:
            internals.trial_brackets(self).pop(trial.trial_id, None)
        else:
            super().on_trial_complete(tune_controller, trial, result)
        self._save()
