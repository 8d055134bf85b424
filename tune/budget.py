"""The sweep's budgets and stop rules (``--time-budget``, ``--gpu-hours``, ``--stop-at``, ``--patience``), as a Ray
Tune ``Stopper``, and the cost ledger they keep (``tune.ledger``).

When a rule fires, no new trial starts, and each running trial stops at the end of its epoch, with that epoch's
checkpoint (a Stopper acts on a reported result, as ASHA does), and is told to the study as PRUNED. Only then does
``stop_all`` end the experiment: stopping it at once would cut the running trials off mid-epoch, leaving them
neither finished nor told. The confirmation and the report then run on what was found; one log line says which
rule fired, and the ledger keeps it for the report.

The rules are judged on the ledger, which lives beside the sweep (``<storage>/<name>-budget.json``) and is read
back on ``--resume``, so the search's wall time and GPU-hours count across resumes. Budgets are not recorded:
``--resume`` with a larger one goes on (a rule already met at the start is refused in one line).

Tune pickles the stopper into its experiment state and a resumed Tune runs that copy (``TuneController``'s state
holds it), whatever ``RunConfig(stop=...)`` the resumed driver gives. So ``BudgetStopper`` and ``BudgetWatch`` (the
callback that sees trials start and finish) hold nothing: both act on the driver's current ``Session``, installed
by ``session()`` for the length of ``Tuner.fit``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import threading
import time
from collections.abc import Iterator
from typing import Any

from ray import tune
from ray.tune.stopper import Stopper

from genre_sweep.model.configs import score
from genre_sweep.store import StoreOptions
from genre_sweep.tune import ledger as ledgers
from genre_sweep.tune.configs import SweepConfig, SweepError
from genre_sweep.tune.ledger import Ledger, TrialCost, show_duration

log = logging.getLogger(__name__)

SAVE_EVERY_S = 10.0  # the ledger is saved on every report and trial end, and at least this often in between
LIVE = ("PENDING", "RUNNING", "PAUSED")  # Tune's statuses of a trial that has not ended


@dataclasses.dataclass(frozen=True)
class Rules:
    """The stop rules of one run of the sweep (none recorded: a resume may give others)."""

    metric: str
    mode: str
    time_budget_s: float | None = None
    gpu_hours: float | None = None
    stop_at: float | None = None
    patience: int | None = None
    min_delta: float = 0.0

    @classmethod
    def of(cls, cfg: SweepConfig) -> Rules:
        return cls(
            metric=cfg.metric,
            mode=cfg.direction,
            time_budget_s=ledgers.duration_s(cfg.time_budget) if cfg.time_budget else None,
            gpu_hours=cfg.gpu_hours,
            stop_at=cfg.stop_at,
            patience=cfg.patience,
            min_delta=cfg.min_delta,
        )


@dataclasses.dataclass(frozen=True)
class Fired:
    rule: str  # the flag: --time-budget, --gpu-hours, --stop-at, --patience
    message: str


def reached(value: float, target: float, mode: str) -> bool:
    """Whether ``value`` of the objective reaches ``target`` in its direction (>= for max, <= for min)."""
    return math.isfinite(value) and score(value, mode) >= score(target, mode)


def since_improvement(values: list[float], mode: str, min_delta: float) -> int:
    """How many of ``values`` (finished trials' best values, in the order they finished) came after the last one that
    improved the best so far by more than ``min_delta`` (the first finite one always does)."""
    best, since = None, 0
    for value in values:
        if not math.isfinite(value):
            since += best is not None
        elif best is None or score(value, mode) - score(best, mode) > min_delta:
            best, since = value, 0
        else:
            since += 1
    return since


def time_rule(rules: Rules, elapsed_s: float) -> Fired | None:
    if rules.time_budget_s is None or elapsed_s < rules.time_budget_s:
        return None
    return Fired(
        "--time-budget",
        f"--time-budget {show_duration(rules.time_budget_s)} spent ({show_duration(elapsed_s)} of wall time since the "
        "sweep's start, across resumes)",
    )


def gpu_rule(rules: Rules, ledger: Ledger) -> Fired | None:
    if rules.gpu_hours is None or ledger.gpu_hours < rules.gpu_hours:
        return None
    return Fired(
        "--gpu-hours", f"--gpu-hours {rules.gpu_hours:g} spent ({ledger.gpu_hours:.4f} GPU-hours used by the trials)"
    )


def stop_at_rule(rules: Rules, ledger: Ledger) -> Fired | None:
    if rules.stop_at is None:
        return None
    hits = [t for t in ledger.trials.values() if t.best is not None and reached(t.best, rules.stop_at, rules.mode)]
    if not hits:
        return None
    best = max(hits, key=lambda t: score(t.best, rules.mode))
    return Fired(
        "--stop-at",
        f"--stop-at {rules.stop_at:g} reached: {rules.metric} {best.best:.4g} (trial {best.trial}, by epoch "
        f"{best.epochs})",
    )


def patience_rule(rules: Rules, ledger: Ledger) -> Fired | None:
    if rules.patience is None:
        return None
    finished = [t for t in ledger.finished() if t.best is not None]
    values = [float(t.best) for t in finished]  # type: ignore[arg-type]
    if since_improvement(values, rules.mode, rules.min_delta) < rules.patience:
        return None
    best = max(values, key=lambda v: score(v, rules.mode))
    return Fired(
        "--patience",
        f"--patience {rules.patience}: the best {rules.metric} ({best:.4g}) has not improved by more than "
        f"{rules.min_delta:g} in the last {rules.patience} finished trials",
    )


def fired_rule(rules: Rules, ledger: Ledger, elapsed_s: float) -> Fired | None:
    """The first rule met by ``ledger`` after ``elapsed_s`` of the search's wall time, or None."""
    return (
        time_rule(rules, elapsed_s)
        or gpu_rule(rules, ledger)
        or stop_at_rule(rules, ledger)
        or patience_rule(rules, ledger)
    )


def count_result(cost: TrialCost, result: dict[str, Any], metric: str, mode: str) -> bool:
    """Add one reported epoch to ``cost``: its time, its epoch, its device, its value of the objective. False for a
    report already counted (Tune hands a trial's last report to the stopper again when its function returns)."""
    key = [float(result.get("training_iteration", 0)), float(result.get("time_total_s", 0.0))]
    if cost.last == key:
        return False
    cost.last = key
    cost.seconds += float(result.get("time_this_iter_s") or 0.0)
    cost.epochs = max(cost.epochs, int(result.get("training_iteration", 0)))
    if "device" in result and not cost.device:
        cost.device = str(result["device"]) + (f" ({result['gpu_name']})" if result.get("gpu_name") else "")
    value = result.get(metric)
    if isinstance(value, int | float) and math.isfinite(value):
        if cost.best is None or score(value, mode) > score(cost.best, mode):
            cost.best = float(value)
    return True


class Session:
    """One driver's run of a sweep's search: its rules, the ledger it keeps, what Tune's trials are doing."""

    def __init__(
        self,
        rules: Rules,
        ledger: Ledger,
        uri: str,
        options: StoreOptions,
        resources: tuple[float, float],
        default_epochs: int,
        price: float | None = None,
    ) -> None:
        self.rules, self.ledger, self.uri, self.options = rules, ledger, uri, options
        self.resources = resources  # (CPUs, GPUs) of a trial whose own Tune did not say
        self.default_epochs = default_epochs
        self.price = price  # --gpu-hour-price, for the progress lines
        self.before_s = ledger.elapsed_s  # the search's wall time in earlier sessions
        self.started = time.monotonic()
        self.saved = 0.0
        self.fired: Fired | None = None
        self.trials: list[Any] = []  # Tune's trials (its own list, kept up to date by Tune)
        self.lock = threading.Lock()
        ledger.fired = None

    def elapsed(self) -> float:
        return self.before_s + time.monotonic() - self.started

    def cost(self, trial_id: str) -> TrialCost:
        if trial_id not in self.ledger.trials:
            cpus, gpus = self.resources
            self.ledger.trials[trial_id] = TrialCost(trial_id, gpus=gpus, cpus=cpus)
        return self.ledger.trials[trial_id]

    def save(self, final: bool = False) -> None:
        """Save the ledger: once while the search runs (the next report saves it again: an unreachable store does
        not hold up Tune's loop), with retries at its end."""
        self.ledger.elapsed_s = self.elapsed()
        ledgers.save(self.uri, self.ledger, self.options, (1.0, 2.0) if final else ())
        self.saved = time.monotonic()

    def judge(self) -> None:
        """Fire the first rule met, once: one log line, and the ledger keeps it."""
        if self.fired is not None:
            return
        fired = fired_rule(self.rules, self.ledger, self.elapsed())
        if fired is None:
            return
        self.fired = fired
        self.ledger.fired = dataclasses.asdict(fired)
        live = sum(1 for t in self.trials if t.status in LIVE)
        log.warning(
            "stop rule %s: %s; no new trial starts, and %s at the end of %s epoch (pruned in the study)",
            fired.rule,
            fired.message,
            "the trial running stops" if live == 1 else f"the {live} trials running stop",
            "its" if live == 1 else "their",
        )
        self.save()

    # --- the Stopper's two calls -------------------------------------------------------------------------------

    def on_result(self, trial_id: str, result: dict[str, Any]) -> bool:
        with self.lock:
            cost = self.cost(trial_id)
            if not count_result(cost, result, self.rules.metric, self.rules.mode):
                return False
            self.judge()
            stop = self.fired is not None
            if stop and cost.epochs < (cost.planned or self.default_epochs):
                cost.stopped_by = self.fired.rule  # type: ignore[union-attr]
            self.save()
            return stop

    def stop_all(self) -> bool:
        """True once a rule has fired and no trial is left running or waiting to run (each ran to its epoch's
        end); Tune then ends the experiment, and marks its search finished (``internals.reopen_stopped_search``
        opens it again for a resume)."""
        with self.lock:
            self.judge()  # the wall time passes between reports
            if time.monotonic() - self.saved >= SAVE_EVERY_S:
                self.save()
            return self.fired is not None and not any(t.status in LIVE for t in self.trials)

    # --- what the callback sees ------------------------------------------------------------------------------

    def on_trial_start(self, trial: Any) -> None:
        with self.lock:
            cost = self.cost(trial.trial_id)
            resources = trial.placement_group_factory.required_resources
            cost.cpus, cost.gpus = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
            cost.planned = int(trial.config.get("num_train_epochs", self.default_epochs))

    def on_trial_complete(self, trial: Any) -> None:
        with self.lock:
            cost = self.cost(trial.trial_id)
            if cost.finished is None and cost.best is not None:  # a trial that trained (not one that failed)
                cost.finished = 1 + max((t.finished or 0 for t in self.ledger.trials.values()), default=0)
            self.judge()
            self.save()


_SESSION: Session | None = None


def current() -> Session | None:
    """The sweep's running search, if any (the progress lines read its costs)."""
    return _SESSION


def stopping() -> bool:
    """Whether a stop rule has fired in the running search: then no new trial is drawn."""
    return _SESSION is not None and _SESSION.fired is not None


def stopped_by(trial_id: str) -> str | None:
    """The stop rule that stopped ``trial_id`` before its planned epochs, if one did."""
    cost = _SESSION.ledger.trials.get(trial_id) if _SESSION is not None else None
    return cost.stopped_by or None if cost is not None else None


def progress_note(trials: int) -> str:
    """The running search's cost so far and projected (for the progress lines); empty when none runs."""
    return "" if _SESSION is None else ledgers.cost_note(_SESSION.ledger, trials, _SESSION.price)


class BudgetStopper(Stopper):
    """Tune's stopper for the sweep: the running ``Session``'s rules (stateless, so a resumed Tune's unpickled copy
    acts on the resumed driver's rules)."""

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return _SESSION.on_result(trial_id, result) if _SESSION is not None else False

    def stop_all(self) -> bool:
        return _SESSION.stop_all() if _SESSION is not None else False


class BudgetWatch(tune.Callback):
    """Tells the running ``Session`` what Tune's trials do: their resources and epochs at their start, their end, and
    Tune's list of trials (whose statuses say when the last running one has stopped)."""

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if _SESSION is not None:
            _SESSION.trials = trials

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if _SESSION is not None:
            _SESSION.trials = trials
            _SESSION.on_trial_start(trial)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if _SESSION is not None:
            _SESSION.on_trial_complete(trial)


def starting_ledger(cfg: SweepConfig) -> Ledger:
    """The ledger a run of the sweep starts from: the saved one on ``--resume``, else a new one."""
    return ledgers.load(ledgers.ledger_uri(cfg.root), cfg.options) if cfg.resume else Ledger()


def refuse_if_spent(cfg: SweepConfig) -> None:
    """A ``--resume`` whose rules are already met by the saved ledger would start nothing: one line, before Ray
    starts, saying which and how to go on."""
    if not cfg.resume:
        return
    saved = starting_ledger(cfg)
    fired = fired_rule(Rules.of(cfg), saved, saved.elapsed_s)
    if fired is not None:
        raise SweepError(
            f"sweep {cfg.name}: {fired.message} already, so a resume would start no trial; give a larger {fired.rule} "
            f"(or none) to go on, or confirm what was found with `genre-sweep retrain --storage {cfg.storage} "
            f"--name {cfg.name}`"
        )


@contextlib.contextmanager
def session(cfg: SweepConfig, default_epochs: int) -> Iterator[Session]:
    """The sweep's stop rules and ledger for the length of ``Tuner.fit``; the ledger is saved when it ends (however
    it ends: a Ctrl-C's resume counts the time spent)."""
    global _SESSION
    active = Session(
        Rules.of(cfg),
        starting_ledger(cfg),
        ledgers.ledger_uri(cfg.root),
        cfg.options,
        (cfg.cpus_per_trial, cfg.gpus_per_trial),
        default_epochs,
        cfg.gpu_hour_price,
    )
    _SESSION = active
    try:
        yield active
    finally:
        _SESSION = None
        active.save(final=True)
