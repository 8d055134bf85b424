"""Every use of Ray's and Optuna's private attributes, in one place, each failing loudly when an upgrade changes it.

Ray gives no public way to do nine things the sweep needs: tell OptunaSearch's study a trial's final state
itself (to record ASHA-stopped trials as PRUNED), save and restore ASHA's rungs and the median stopping rule's
results (Tune saves no scheduler state), hand a restored Tuner its scheduler back, validate a cluster config offline
the way `ray up` does, stop a running ``Tuner.fit`` gracefully on SIGTERM as on Ctrl-C, and keep the driver's AWS
credentials out of the runtime environment Tune gives every trial (Ray's runtime-env agent logs it in plain text), let
a resumed sweep's retention pass over checkpoints its killed driver had already deleted, forward a reused trial
actor's log lines under the trial it runs now, leave out Tune's TensorBoard hint (a folder the trials' event
files are not in), let a search a stop rule ended go on when resumed with a larger budget, add loggers to a
Tuner (made or restored) and run W&B's per-trial logging actors in the driver's W&B environment, and read which
nodes Ray is draining (a trial on a node being preempted checkpoints and moves). Each
accessor checks the attribute's presence and shape and raises ``LibraryChanged`` naming it;
``tests/tune/test_internals.py`` runs them all against the installed Ray and Optuna in a second.
"""

from __future__ import annotations

import functools
import inspect
import sys
from typing import Any

from genre_sweep.errors import GenreSweepError


class LibraryChanged(GenreSweepError, RuntimeError):
    """A private attribute genre-sweep relies on is gone or changed shape: an upgrade of Ray or Optuna."""


def _attr(obj: Any, name: str, kind: type | tuple[type, ...]) -> Any:
    """``obj.name``, which must exist and be a ``kind``."""
    owner = type(obj).__name__
    if not hasattr(obj, name):
        raise LibraryChanged(
            f"{owner}.{name} is gone in the installed Ray/Optuna; genre_sweep/tune/internals.py needs updating"
        )
    value = getattr(obj, name)
    if not isinstance(value, kind):
        raise LibraryChanged(
            f"{owner}.{name} is a {type(value).__name__}, not the {getattr(kind, '__name__', kind)} "
            "genre_sweep/tune/internals.py expects; it needs updating for the installed Ray/Optuna"
        )
    return value


def _module(name: str) -> Any:
    """The module ``name``, which must exist."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise LibraryChanged(f"{name} is gone ({e}); genre_sweep/tune/internals.py needs updating") from e


# --- Ray Tune's OptunaSearch: its study and its Optuna trial per Tune trial ---------------------------------


def optuna_study(searcher: Any) -> Any:
    """The Optuna study behind an ``OptunaSearch`` (``_ot_study``)."""
    import optuna

    return _attr(searcher, "_ot_study", optuna.Study)


def optuna_trial(searcher: Any, trial_id: str) -> Any | None:
    """The Optuna trial an ``OptunaSearch`` asked for Tune trial ``trial_id`` (``_ot_trials``), if any."""
    return _attr(searcher, "_ot_trials", dict).get(trial_id)


def running_trial(study: Any, frozen: Any) -> Any:
    """The live ``optuna.Trial`` of a RUNNING ``FrozenTrial`` (its storage id, ``_trial_id``), to set its user
    attributes before it is told."""
    import optuna

    return optuna.trial.Trial(study, _attr(frozen, "_trial_id", int))


def completed_trials(searcher: Any) -> set[str]:
    """The Tune trial ids whose result an ``OptunaSearch`` already told the study (``_completed_trials``)."""
    return _attr(searcher, "_completed_trials", set)


# --- Ray Tune's ASHAScheduler: brackets, their rungs, the trial -> bracket map ------------------------------


def asha_brackets(scheduler: Any) -> list[Any]:
    """An ``ASHAScheduler``'s brackets (``_brackets``)."""
    return _attr(scheduler, "_brackets", list)


def trial_brackets(scheduler: Any) -> dict[str, Any]:
    """An ``ASHAScheduler``'s trial id -> bracket map (``_trial_info``); writable."""
    return _attr(scheduler, "_trial_info", dict)


def bracket_rungs(bracket: Any) -> list[tuple[float, dict[str, float]]]:
    """A bracket's rungs (``_rungs``): (milestone, {trial id: recorded score}), highest milestone first."""
    rungs = _attr(bracket, "_rungs", list)
    if not all(isinstance(r, tuple) and len(r) == 2 and isinstance(r[1], dict) for r in rungs):
        raise LibraryChanged(
            f"{type(bracket).__name__}._rungs no longer holds (milestone, dict) pairs; "
            "genre_sweep/tune/internals.py needs updating for the installed Ray"
        )
    return rungs


def set_bracket_rungs(bracket: Any, recorded: dict[float, dict[str, float]]) -> None:
    """Put back each milestone's recorded scores (milestones missing from ``recorded`` start empty)."""
    rungs = bracket_rungs(bracket)
    bracket._rungs = [(m, dict(recorded.get(float(m), {}))) for m, _ in rungs]


# --- Ray Tune's MedianStoppingRule: each trial's results, and the metric it compares -------------------------


def median_results(scheduler: Any) -> dict[Any, list[dict[str, Any]]]:
    """A ``MedianStoppingRule``'s results so far (``_results``: trial -> its result dicts, in order); writable. Ray
    keys it by ``Trial``; any other hashable key (a restored trial's id) counts as one more trial to compare with."""
    results = _attr(scheduler, "_results", dict)
    if not all(isinstance(v, list) for v in results.values()):
        raise LibraryChanged(
            f"{type(scheduler).__name__}._results no longer maps trials to lists of results; "
            "genre_sweep/tune/internals.py needs updating for the installed Ray"
        )
    return results


def median_metric(scheduler: Any) -> str:
    """The metric a ``MedianStoppingRule`` compares (``_metric``, set by Tune from ``TuneConfig``)."""
    return _attr(scheduler, "_metric", str)


# --- Ray Tune's Tuner: the scheduler of a restored experiment -----------------------------------------------


def set_restored_scheduler(tuner: Any, scheduler: Any) -> None:
    """Give a ``Tuner.restore``d tuner ``scheduler``: Tune restores no scheduler itself and has no parameter for one."""
    local = _attr(tuner, "_local_tuner", object)
    config = _attr(local, "_tune_config", object)
    _attr(config, "scheduler", object)
    config.scheduler = scheduler


def restored_scheduler(tuner: Any) -> Any:
    """The scheduler a tuner will run with (what ``set_restored_scheduler`` set)."""
    return _attr(_attr(_attr(tuner, "_local_tuner", object), "_tune_config", object), "scheduler", object)


def tuner_callbacks(tuner: Any) -> list[Any]:
    """The callbacks a tuner's ``fit`` runs with (its run config's, made a list when it has none), writable: a
    logger added here (``tune.tracking``) is not in the state Tune saved when the tuner was made or restored."""
    config = _attr(_attr(tuner, "_local_tuner", object), "_run_config", object)
    if _attr(config, "callbacks", (list, type(None))) is None:
        config.callbacks = []
    return config.callbacks


def wandb_logging_actor() -> type:
    """Ray's per-trial W&B logging actor (``_WandbLoggingActor``), which ``WandbLoggerCallback`` starts from its
    ``_logger_actor_cls``: a subclass set there runs in the driver's W&B environment (``tune.tracking``)."""
    module = _module("ray.air.integrations.wandb")
    _attr(module.WandbLoggerCallback, "_logger_actor_cls", type)
    return _attr(module, "_WandbLoggingActor", type)


# --- Ray's autoscaler: a cluster config with its defaults, validated offline as `ray up` does ---------------


def prepare_cluster_config(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with Ray's defaults filled in, then validated against Ray's schema.

    Raises jsonschema's ValidationError for a schema violation (as ``ray up`` would), LibraryChanged if
    Ray moved the functions.
    """
    try:
        from ray.autoscaler._private.util import prepare_config, validate_config
    except ImportError as e:
        raise LibraryChanged(
            f"ray.autoscaler._private.util lacks prepare_config/validate_config ({e}); "
            "genre_sweep/tune/internals.py needs updating for the installed Ray"
        ) from e
    full = prepare_config(config)
    validate_config(full)
    return full


# --- Ray Tune's run loop: the graceful stop its own Ctrl-C handler makes ------------------------------------


def request_tune_stop() -> bool:
    """Ask a running ``Tuner.fit`` (in this process's main thread) to stop as its Ctrl-C handler does: Tune saves
    its experiment state and stops the trials, keeping them resumable. Tune installs that handler for SIGUSR1 too
    for the length of the run (``ray.tune.tune._setup_signal_catching``); this calls it. False when no Tune run
    has installed it yet (``fit`` still setting up): nothing to stop gracefully."""
    import signal

    handler = signal.getsignal(signal.SIGUSR1)
    if handler in (signal.SIG_DFL, signal.SIG_IGN, None):
        return False
    if not callable(handler) or "_setup_signal_catching" not in getattr(handler, "__qualname__", ""):
        raise LibraryChanged(
            "Tune no longer installs its stop handler for SIGUSR1 during Tuner.fit "
            f"(found {handler!r}); genre_sweep/tune/internals.py needs updating for the installed Ray"
        )
    handler(signal.SIGUSR1, None)
    return True


# --- Ray Tune's trial actors: the driver's environment variables it copies into them ------------------------

AWS_CREDENTIALS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN")


def keep_credentials_out_of_trials() -> None:
    """Tune copies the driver's AWS credentials into every trial actor's runtime environment
    (``ray.tune.execution.class_cache.ENV_VARS_TO_PROPAGATE``), which Ray's runtime-env agent writes to its log in
    plain text. Remove them: a trial's node uses its own credentials (instance profile, or the AWS chain of the
    environment Ray was started in)."""
    class_cache = _module("ray.tune.execution.class_cache")
    propagated = getattr(class_cache, "ENV_VARS_TO_PROPAGATE", None)
    if not isinstance(propagated, set):
        raise LibraryChanged(
            "ray.tune.execution.class_cache.ENV_VARS_TO_PROPAGATE is no longer a set; "
            "genre_sweep/tune/internals.py needs updating for the installed Ray"
        )
    propagated.difference_update(AWS_CREDENTIALS)


# --- Ray Train's checkpoint retention: deleting a checkpoint that is already gone ---------------------------


def tolerate_deleted_checkpoints() -> None:
    """A resumed sweep's Tune restores each trial's list of kept checkpoints from its last snapshot; a driver
    killed after that snapshot may have deleted some of them already. Retention then deletes them again, which
    raises ``FileNotFoundError`` inside Tune's checkpoint handling (a logged traceback, and that checkpoint's
    bookkeeping cut short). Make deleting a checkpoint that is gone a no-op
    (``ray.train._internal.checkpoint_manager._delete_fs_path``)."""
    checkpoint_manager = _module("ray.train._internal.checkpoint_manager")
    delete = getattr(checkpoint_manager, "_delete_fs_path", None)
    if not callable(delete):
        raise LibraryChanged(
            "ray.train._internal.checkpoint_manager._delete_fs_path is gone; "
            "genre_sweep/tune/internals.py needs updating for the installed Ray"
        )
    if getattr(delete, "tolerates_deleted", False):
        return

    def delete_if_there(fs: Any, fs_path: str) -> None:
        try:
            delete(fs=fs, fs_path=fs_path)
        except FileNotFoundError:
            pass  # deleted before the driver that is resuming now was started

    delete_if_there.tolerates_deleted = True  # type: ignore[attr-defined]
    delete_if_there.wrapped = delete  # type: ignore[attr-defined]
    checkpoint_manager._delete_fs_path = delete_if_there


# --- Ray's log monitor: the name an actor's forwarded log lines carry ----------------------------------------


def name_actor_in_logs(name: str) -> None:
    """Forward this actor's later log lines under ``name``. Ray prefixes them with the repr the actor had when it
    was created: its worker prints ``:actor_name:<repr>`` (``ray._private.ray_constants.LOG_PREFIX_ACTOR_NAME``) to
    stdout and stderr then, and Ray's log monitor (``ray._private.log_monitor``) takes such a line as the name of
    the lines after it, forwarding it to no one. Print it again."""
    constants = _module("ray._private.ray_constants")
    prefix = getattr(constants, "LOG_PREFIX_ACTOR_NAME", None)
    if not isinstance(prefix, str) or not prefix:
        raise LibraryChanged(
            "ray._private.ray_constants.LOG_PREFIX_ACTOR_NAME is gone; "
            "genre_sweep/tune/internals.py needs updating for the installed Ray"
        )
    for stream in (sys.stdout, sys.stderr):
        print(f"{prefix}{name}", file=stream, flush=True)


# --- Ray Tune's console output: the TensorBoard hint of an experiment's start --------------------------------


def drop_tensorboard_hint() -> None:
    """Tune prints "To visualize your results with TensorBoard, run: `tensorboard --logdir <folder>`" as an
    experiment starts, naming its driver's staging folder in Ray's temp folder, where the trials' event files are
    not (they are in <storage>/<name>; the sweep says so itself). Its progress reporter's ``experiment_started``
    (``ray.tune.experimental.output.ProgressReporter``) prints it when given a ``tensorboard_path``: give it none
    (the line before it, "View detailed results here: <storage>/<name>", stays)."""
    output = _module("ray.tune.experimental.output")
    reporter = getattr(output, "ProgressReporter", None)
    started = getattr(reporter, "experiment_started", None)
    if getattr(started, "drops_tensorboard_hint", False):
        return
    if not callable(started) or "tensorboard_path" not in inspect.signature(started).parameters:
        raise LibraryChanged(
            "ray.tune.experimental.output.ProgressReporter.experiment_started no longer takes tensorboard_path; "
            "genre_sweep/tune/internals.py needs updating for the installed Ray"
        )
    signature = inspect.signature(started)

    @functools.wraps(started)
    def without_hint(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        bound.arguments["tensorboard_path"] = None
        return started(*bound.args, **bound.kwargs)

    without_hint.drops_tensorboard_hint = True  # type: ignore[attr-defined]
    reporter.experiment_started = without_hint  # type: ignore[union-attr]


# --- Ray Tune's search generator: a search that a stop rule ended, restored -----------------------------------


def reopen_stopped_search() -> None:
    """A stop rule's ``stop_all`` (``tune.budget``) makes Tune mark its search finished
    (``SearchGenerator.set_finished``), and a restored experiment keeps that flag (``_finished`` in its saved state):
    ``Tuner.restore(...).fit()`` would then start no trial, whatever trials the sweep has left (tested). Make a
    restored search generator finished only when it has created all its trials
    (``ray.tune.search.search_generator.SearchGenerator.set_state``); nothing else marks our search finished early
    (a Ctrl-C does not)."""
    generator = getattr(_module("ray.tune.search.search_generator"), "SearchGenerator", None)
    set_state = getattr(generator, "set_state", None)
    if getattr(set_state, "reopens", False):
        return
    if not callable(set_state):
        raise LibraryChanged(
            "ray.tune.search.search_generator.SearchGenerator.set_state is gone; "
            "genre_sweep/tune/internals.py needs updating for the installed Ray"
        )

    def set_state_reopened(self: Any, state: dict[str, Any]) -> None:
        set_state(self, state)
        finished, created, total = (_attr(self, a, (bool, int)) for a in ("_finished", "_counter", "_total_samples"))
        if finished and created < total:
            self._finished = False

    set_state_reopened.reopens = True  # type: ignore[attr-defined]
    set_state_reopened.wrapped = set_state  # type: ignore[attr-defined]
    generator.set_state = set_state_reopened  # type: ignore[union-attr]


# --- Ray's nodes being drained (a spot notice, `ray drain-node`) ---------------------------------------------


def draining_nodes() -> dict[str, int]:
    """The nodes Ray is draining, as {node id hex: deadline in ms since the epoch, 0 for none}, read from the GCS by
    a connected process (``ray._private.state.state.get_draining_nodes``, what Ray Train's own preemption watcher
    reads)."""
    get = getattr(_attr(_module("ray._private.state"), "state", object), "get_draining_nodes", None)
    if not callable(get):
        raise LibraryChanged(
            "ray._private.state.state.get_draining_nodes is gone; genre_sweep/tune/internals.py needs updating"
        )
    nodes = get()
    if not isinstance(nodes, dict):
        raise LibraryChanged(
            f"ray._private.state.state.get_draining_nodes() returned a {type(nodes).__name__}, not a dict; "
            "genre_sweep/tune/internals.py needs updating for the installed Ray"
        )
    return nodes
