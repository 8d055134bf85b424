"""A search that starts from what is known: a previous study's trials, configurations to try first, the recipe.

Everything here shapes a *new* sweep's Optuna study before its searcher loads it (a resumed sweep's study
already holds it all):

- ``--warm-start SOURCE`` adds a previous study's finished trials (COMPLETE, and PRUNED with their per-epoch
  values) whose values fit the new space, so TPE starts informed: they count toward its start-up trials. They
  are marked with the user attribute ``warm_start`` (the source) and are no Tune trials: no folder, no
  checkpoint, never a confirmation candidate (the confirmation ranks Tune's own results).
- ``--enqueue FILE.yaml`` and the recipe trial are enqueued in the study (``Study.enqueue_trial``), in order: the
  recipe (the ``train`` job's defaults, user attribute ``recipe``), then the file's entries (``enqueued``). Tune's
  first trials ask the study and get them. A partial entry is completed by the sampler; Ray's own
  ``points_to_evaluate`` refuses partial points, hence the study's queue.

Every input is checked before Ray starts (``known``); ``seed_study`` puts it into the searcher's new study (numbered
before any trial of this sweep).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import logging
import math
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import optuna.distributions as od
from optuna.trial import FrozenTrial, TrialState
from ray import tune

from genre_sweep.config import ConfigError, load_yaml
from genre_sweep.errors import one_line
from genre_sweep.model.configs import TrainConfig
from genre_sweep.store import StoreError, StoreOptions, is_s3, join, read_bytes
from genre_sweep.tune.configs import RetrainConfig, SweepConfig, SweepError
from genre_sweep.tune.confirm import Candidate, Confirmation
from genre_sweep.tune.record import RECORD, WRITER, SweepRecord
from genre_sweep.tune.space import SearchSpace
from genre_sweep.tune.study import SQLITE
from genre_sweep.tune.trial import TRIAL_ERROR

log = logging.getLogger(__name__)

WARM = "warm_start"  # user attribute of a trial added by --warm-start: its source
WARM_TRIAL = "warm_trial"  # ... and its name there (the trial's name in that sweep, else #<number>)
RECIPE = "recipe"  # user attribute of the recipe trial: True
ENQUEUED = "enqueued"  # user attribute of a trial --enqueue asked for: <file>#<entry>
KEPT_ATTRS = ("best_value", "best_epoch", "last_value", "last_epoch")  # what a warm trial keeps of its attributes


@dataclasses.dataclass(frozen=True)
class Known:
    """What a new sweep's study starts with: the previous trials that fit (``warm``), how many were skipped and
    why, the trials to run first (the recipe, then ``--enqueue``'s entries) as (params, user attributes), and the
    recipe's values moved into the space."""

    source: str | None
    warm: list[FrozenTrial]
    skipped: dict[str, int]
    first: list[tuple[dict[str, Any], dict[str, Any]]]
    moved: list[str]


def known(cfg: SweepConfig, record: SweepRecord) -> Known:
    """Read and check ``--warm-start``, ``--enqueue`` and the recipe against the record's space; a ConfigError or
    SweepError (one line naming the input and the problem) before Ray starts."""
    space = record.search_space
    warm: list[FrozenTrial] = []
    skipped: dict[str, int] = {}
    if cfg.warm_start:
        old = load_study_trials(cfg.warm_start, cfg.options, cfg.metric, cfg.direction)
        warm, skipped = fitting(old, space.distributions(), cfg.warm_start)
    first: list[tuple[dict[str, Any], dict[str, Any]]] = []
    moved: list[str] = []
    if cfg.recipe_trial:
        params, moved = recipe_params(space)
        first.append((params, {RECIPE: True}))
    if cfg.enqueue:
        entries = load_enqueue(cfg.enqueue, space)
        first += [(entry, {ENQUEUED: f"{cfg.enqueue}#{i}"}) for i, entry in enumerate(entries, 1)]
    if cfg.trials is not None and len(first) > cfg.trials:
        recipe = " and the recipe's" if cfg.recipe_trial else ""
        raise ConfigError(
            f"--enqueue {cfg.enqueue}: its {len(first) - bool(cfg.recipe_trial)} configurations{recipe} are more "
            f"than --trials {cfg.trials}"
        )
    return Known(cfg.warm_start, warm, skipped, first, moved)


def seed_study(cfg: SweepConfig, record: SweepRecord, study: optuna.Study) -> None:
    """Put what is known into a new sweep's ``study`` (the searcher's, still empty): the previous trials, then the
    queue Tune's first trials ask for."""
    what = known(cfg, record)
    if what.source:
        why = "; ".join(f"{reason}: {n}" for reason, n in sorted(what.skipped.items()))
        log.info(
            "warm start: %d trials of %s added to the study, %d skipped%s",
            len(what.warm),
            what.source,
            sum(what.skipped.values()),
            f" ({why})" if why else "",
        )
    if what.moved:
        log.info("recipe trial: outside the space, the nearest value is used: %s", "; ".join(what.moved))
    if what.warm:
        study.add_trials(what.warm)
    for params, attrs in what.first:
        study.enqueue_trial(params, user_attrs=attrs)
    if what.first:
        log.info(
            "first trials: %s",
            ", ".join(
                "the recipe" if attrs.get(RECIPE) else f"--enqueue entry {attrs[ENQUEUED].rpartition('#')[2]}"
                for _, attrs in what.first
            ),
        )


# --- --warm-start ----------------------------------------------------------------------------------------------


def is_storage_url(source: str) -> bool:
    """An Optuna storage URL (``sqlite:///...``, ``postgresql://...``), not a sweep folder (local or s3://)."""
    return "://" in source and not is_s3(source) and not source.startswith("file://")


def load_study_trials(source: str, options: StoreOptions, metric: str, direction: str) -> list[FrozenTrial]:
    """The trials of the study ``source`` names; SweepError when it cannot be read, or optimised another metric or
    in another direction."""
    with study_at(source, options) as (url, name):
        there(source, url)
        try:
            study = optuna.load_study(study_name=name, storage=url)
        except KeyError:
            raise SweepError(f"--warm-start {source}: no study named {name!r} in {url}") from None
        except Exception as e:  # a storage that is not an Optuna database, unreachable, ...
            raise SweepError(f"--warm-start {source}: cannot read the study {name!r} at {url}: {e}") from e
        theirs = "/".join("max" if d == optuna.study.StudyDirection.MAXIMIZE else "min" for d in study.directions)
        names = study.metric_names or []
        if (names and names != [metric]) or theirs != direction:
            raise SweepError(
                f"--warm-start {source}: its study {theirs}imises {names[0] if names else 'its objective'}, this sweep "
                f"{direction}imises {metric}; its values cannot inform this search"
            )
        return study.get_trials(deepcopy=True)


@contextlib.contextmanager
def study_at(source: str, options: StoreOptions) -> Iterator[tuple[str, str]]:
    """(storage URL, study name) of ``source``: ``URL#name`` (the name may be left out when the storage holds one
    study), or a sweep folder: its record names the study, kept in ``<folder>/optuna.db`` when local, copied to
    ``<folder>-optuna.db`` with s3:// storage (read into a temporary file here), else at the record's URL."""
    if is_storage_url(source):
        url, _, name = source.partition("#")
        there(source, url)
        if not name:
            try:
                names = optuna.study.get_all_study_names(storage=url)
            except Exception as e:  # an unreachable server, a missing driver, not a study's database
                raise SweepError(f"--warm-start {source}: cannot read {url}: {type(e).__name__}: {one_line(e)}") from e
            if len(names) != 1:
                raise SweepError(
                    f"--warm-start {source}: name the study after # (e.g. {url}#{names[0] if names else 'name'}); "
                    f"the storage holds {len(names)}: {', '.join(names) or 'none'}"
                )
            name = names[0]
        yield url, name
        return
    name, recorded_url = folder_record(source, options)
    if not is_s3(source):
        local = Path(source) / "optuna.db"
        yield (f"{SQLITE}{local}" if local.exists() or not recorded_url else recorded_url), name
        return
    try:
        data = read_bytes(source.rstrip("/") + "-optuna.db", options)
    except FileNotFoundError:
        yield recorded_url, name  # a study in a server's storage (PostgreSQL), or still on this driver's disk
        return
    except OSError as e:
        raise StoreError(f"--warm-start {source}: cannot read its study's copy: {e}") from e
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "optuna.db"
        copy.write_bytes(data)
        yield f"{SQLITE}{copy}", name


def there(source: str, url: str) -> None:
    """A SQLite study must exist to be read (Optuna would create an empty one)."""
    if url.startswith(SQLITE) and not Path(url.removeprefix(SQLITE)).is_file():
        raise SweepError(f"--warm-start {source}: no study there ({url.removeprefix(SQLITE)} does not exist)")


def folder_record(folder: str, options: StoreOptions) -> tuple[str, str]:
    """The study's name and URL (when it names one) a sweep folder's record names."""
    where = join(folder, RECORD)
    try:
        raw = json.loads(read_bytes(where, options))
        if not isinstance(raw, dict) or raw.get("written_by") != WRITER:
            raise ValueError("another writer")
        return str(raw["name"]), str(raw.get("study_url") or "")
    except FileNotFoundError:
        raise SweepError(
            f"--warm-start {folder}: not a sweep folder (no {RECORD}); give a sweep's folder, <storage>/<name>, or "
            "an Optuna storage URL with the study's name, e.g. sqlite:///old.db#name"
        ) from None
    except (ValueError, KeyError, TypeError) as e:
        raise SweepError(f"--warm-start {folder}: {where} is not a genre-sweep record ({e})") from e
    except OSError as e:
        raise StoreError(f"--warm-start {folder}: cannot read {where}: {e}") from e


def fitting(
    trials: list[FrozenTrial], distributions: dict[str, od.BaseDistribution], source: str
) -> tuple[list[FrozenTrial], dict[str, int]]:
    """The finished trials (complete, pruned) whose values fit ``distributions``, as new trials of this space
    (a parameter the space no longer searches left out), marked with their source; and how many of the others were
    skipped, by reason (the first misfit; failed and unfinished trials are not counted)."""
    out, skipped = [], collections.Counter[str]()
    for t in trials:
        if t.state not in (TrialState.COMPLETE, TrialState.PRUNED):
            continue
        why = misfit(t.params, distributions)
        if why is None and t.state == TrialState.COMPLETE and (t.value is None or math.isnan(t.value)):
            why = "no value"
        if why is not None:
            skipped[why] += 1
            continue
        attrs = {k: t.user_attrs[k] for k in KEPT_ATTRS if k in t.user_attrs}
        attrs |= {WARM: source, WARM_TRIAL: str(t.user_attrs.get("trial") or f"#{t.number}")}
        out.append(
            optuna.trial.create_trial(
                params={name: t.params[name] for name in distributions},
                distributions=dict(distributions),
                value=t.value,
                intermediate_values=dict(t.intermediate_values),
                state=t.state,
                user_attrs=attrs,
            )
        )
    return out, dict(skipped)


def misfit(params: dict[str, Any], distributions: dict[str, od.BaseDistribution]) -> str | None:
    """Why ``params`` do not fit the space (the first searched hyperparameter missing or outside it); None if they
    do."""
    for name, dist in distributions.items():
        if name not in params:
            return f"{name} missing"
        if not fits(params[name], dist):
            return f"{name} outside the new {'choices' if isinstance(dist, od.CategoricalDistribution) else 'range'}"
    return None


def fits(value: Any, dist: od.BaseDistribution) -> bool:
    """Whether ``value`` is one ``dist`` can draw."""
    if isinstance(dist, od.CategoricalDistribution):
        return any(value == c and type(value) is type(c) or _same_number(value, c) for c in dist.choices)
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        return False
    if not dist.low <= value <= dist.high:
        return False
    if isinstance(dist, od.IntDistribution):
        return float(value).is_integer() and (int(value) - dist.low) % dist.step == 0
    return dist.step is None or math.isclose((value - dist.low) / dist.step, round((value - dist.low) / dist.step))


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _same_number(a: Any, b: Any) -> bool:
    numbers = (int, float)
    return isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool) and a == b


# --- the recipe ----------------------------------------------------------------------------------------------------


def recipe_params(space: SearchSpace) -> tuple[dict[str, Any], list[str]]:
    """The recipe's configuration in ``space``: the ``train`` job's default of every searched hyperparameter, or,
    where that is outside the space, its nearest value there; and a note for each value moved."""
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    params, moved = {}, []
    for name, dist in space.distributions().items():
        default = defaults[name]
        params[name] = nearest(default, dist)
        if not fits(default, dist):
            moved.append(f"{name} {default!r} -> {params[name]!r}")
    return params, moved


def nearest(value: Any, dist: od.BaseDistribution) -> Any:
    """The value of ``dist`` nearest ``value`` (itself when it fits); a non-number's nearest is the first choice, or
    a range's low end."""
    if fits(value, dist):
        return value
    number = isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value)
    if isinstance(dist, od.CategoricalDistribution):
        numeric = [c for c in dist.choices if _same_number(c, c)]
        return min(numeric, key=lambda c: abs(c - value)) if number and numeric else dist.choices[0]
    if not number:
        return dist.low
    clamped = min(max(value, dist.low), dist.high)
    if isinstance(dist, od.IntDistribution):
        steps = round((clamped - dist.low) / dist.step)
        return min(dist.low + steps * dist.step, dist.high - (dist.high - dist.low) % dist.step)
    if dist.step is not None:
        return dist.low + round((clamped - dist.low) / dist.step) * dist.step
    return float(clamped)


# --- --enqueue ---------------------------------------------------------------------------------------------------


def load_enqueue(path: str, space: SearchSpace) -> list[dict[str, Any]]:
    """The configurations of an ``--enqueue`` file, each value typed as its distribution reads it; a ConfigError
    naming the file, the entry (counted from 1) and the problem when one names a hyperparameter the space does not
    search or a value outside it."""
    loaded = load_yaml(path, "--enqueue")
    if loaded is None:
        return []
    if not isinstance(loaded, list):
        raise ConfigError(
            f"--enqueue {path}: expected a list of configurations (- name: value), got {type(loaded).__name__}"
        )
    distributions = space.distributions()
    entries = []
    for i, entry in enumerate(loaded, 1):
        where = f"--enqueue {path}: entry {i}"
        if not isinstance(entry, dict) or not entry:
            raise ConfigError(f"{where}: expected a mapping of searched hyperparameter: value, got {entry!r}")
        typed = {}
        for name, value in entry.items():
            dist = distributions.get(name)
            if dist is None:
                what = "is fixed by the space" if name in space.fixed else "is not a searched hyperparameter"
                raise ConfigError(f"{where}: {name} {what} (searched: {', '.join(distributions)})")
            typed[name] = typed_value(value, dist)
            if not fits(typed[name], dist):
                raise ConfigError(f"{where}: {name} {value!r} is outside the space ({shown(dist)})")
        entries.append(typed)
    return entries


def typed_value(value: Any, dist: od.BaseDistribution) -> Any:
    """A YAML value as a range reads it: ``1e-3`` (a string to YAML 1.1) as a float, ``8.0`` as an int."""
    if isinstance(dist, od.CategoricalDistribution):  # the choice itself: Tune's config then holds 16, not 16.0
        same = (c for c in dist.choices if type(c) is type(value) and c == value)
        return next(same, next((c for c in dist.choices if _same_number(value, c)), value))
    if isinstance(value, bool):
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        return value
    if isinstance(dist, od.IntDistribution):
        return int(number) if number.is_integer() else number
    return number


def shown(dist: od.BaseDistribution) -> str:
    if isinstance(dist, od.CategoricalDistribution):
        return f"choices {list(dist.choices)}"
    return f"[{dist.low:g}, {dist.high:g}]{' log' if dist.log else ''}"


# --- the recipe in the confirmation ---------------------------------------------------------------------------


def recipe_trial_name(study: optuna.Study) -> str | None:
    """The Tune trial that ran the recipe (its name, the study trial's ``trial`` attribute); None without one."""
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get(RECIPE) and t.user_attrs.get("trial"):
            return str(t.user_attrs["trial"])
    return None


def is_warm(trial: FrozenTrial) -> bool:
    """Whether a study trial was added by --warm-start (not run by this sweep)."""
    return bool(trial.user_attrs.get(WARM))


def with_recipe(
    cfg: RetrainConfig, results: tune.ResultGrid, ranked: list[Candidate], candidates: list[Candidate]
) -> list[Candidate]:
    """``candidates`` with the recipe trial's configuration among them, marked ``recipe``, when the sweep ran one
    (its study says which Tune trial did): so the report can say how far the chosen one beats the recipe. A recipe
    trial that was pruned is retrained as any candidate is (from its configuration: no checkpoint is needed), one that
    crashed too; one whose configuration cannot train (a setting error) is left out, with a line saying so."""
    name = recipe_trial_name(optuna.load_study(study_name=cfg.name, storage=cfg.study_url()))
    if name is None:
        return candidates
    recipe = next((c for c in [*candidates, *ranked] if c.trial == name), None)
    if recipe is None:
        result = next((r for r in results if Path(r.path).name == name), None)
        if result is None:
            log.warning("confirmation: the recipe trial %s is not among the sweep's results; not retrained", name)
            return candidates
        if result.metrics and TRIAL_ERROR in result.metrics:
            log.warning(
                "confirmation: the recipe trial %s is not retrained: its configuration cannot train here (%s)",
                name,
                result.metrics[TRIAL_ERROR],
            )
            return candidates
        recipe = Candidate(name, result.path, dict(result.config), math.nan, 0)
    same = next((i for i, c in enumerate(candidates) if c.params == recipe.params), None)
    if same is not None:  # the recipe's configuration is among the search's best already
        return [dataclasses.replace(c, recipe="top") if i == same else c for i, c in enumerate(candidates)]
    return [*candidates, dataclasses.replace(recipe, recipe="added")]


# --- in the report ------------------------------------------------------------------------------------------------


def own_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The study's trials this sweep ran (not those --warm-start added)."""
    return [t for t in study.get_trials(deepcopy=False) if not is_warm(t) and t.state != TrialState.WAITING]


def trial_columns(trial: FrozenTrial) -> dict[str, Any]:
    """A trial's trials.csv columns about where it came from: the recipe (``recipe``), an --enqueue entry
    (``enqueued``: file#entry), or a previous study (``warm_start``: the source, ``warm_trial``: its name there)."""
    attrs = trial.user_attrs
    return {
        RECIPE: bool(attrs.get(RECIPE)),
        ENQUEUED: attrs.get(ENQUEUED, ""),
        WARM: attrs.get(WARM, ""),
        WARM_TRIAL: attrs.get(WARM_TRIAL, ""),
    }


def known_paths(row: dict[str, Any], path: Callable[[str], str]) -> dict[str, Any]:
    """A trials.csv row's ``warm_start`` source and ``enqueued`` file named by ``path`` (as the report names them)."""
    file, _, entry = str(row.get(ENQUEUED) or "").rpartition("#")
    return {
        WARM: path(row[WARM]) if row.get(WARM) else "",
        ENQUEUED: f"{path(file)}#{entry}" if file else "",
    }


def known_lines(study: optuna.Study, path: Callable[[str], str]) -> list[str]:
    """The Trials section's sentences on what the search started from: the previous study's trials, the recipe
    trial, --enqueue's trials (``path`` names a file as the report does); none when it started from nothing."""
    trials = study.get_trials(deepcopy=False)
    warm = [t for t in trials if is_warm(t)]
    recipe = [t for t in trials if t.user_attrs.get(RECIPE)]
    enqueued = [t for t in trials if t.user_attrs.get(ENQUEUED) and t.state != TrialState.WAITING]  # ran
    lines = []
    if warm:
        sources = ", ".join(f"`{path(s)}`" for s in sorted({str(t.user_attrs[WARM]) for t in warm}))
        lines.append(
            f"The search started from {len(warm)} trial{'s' if len(warm) != 1 else ''} of {sources} "
            f"(`--warm-start`; study numbers {warm[0].number} to {warm[-1].number}, `warm_start` in trials.csv), which "
            "the sampler learnt from before this sweep's first trial. They are not this sweep's: not counted above, "
            "no folder, never confirmed; Optuna's plots of the study include them."
        )
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    for t in recipe:
        name = t.user_attrs.get("trial", "")
        values = ", ".join(f"{k}={_short(v)}" for k, v in t.params.items())
        moved = [f"{k} {_short(defaults[k])} -> {_short(v)}" for k, v in t.params.items() if v != defaults[k]]
        outside = f"; outside the space, so moved to its nearest value: {', '.join(moved)}" if moved else ""
        lines.append(
            f"Trial `{name}` (study number {t.number}) ran the recipe, the `train` job's defaults ({values}{outside}; "
            "`recipe` in trials.csv)."
        )
    if enqueued:
        names = ", ".join(f"`{t.user_attrs.get('trial', t.number)}`" for t in enqueued)
        runs = f"{len(enqueued)} trial{'s' if len(enqueued) != 1 else ''} ran"
        lines.append(f"{runs} `--enqueue`'s configurations first: {names} (`enqueued`).")
    return [*lines, ""] if lines else []


def recipe_lines(confirmation: Confirmation) -> list[str]:
    """The confirmation's sentence on the chosen configuration against the recipe's, from their retrains; none
    without a recipe candidate."""
    versus = confirmation.versus_recipe()
    if versus is None:
        return []
    seeds = len(confirmation.runs_of(versus["trial"]))
    metric = confirmation.metric
    if versus["trial"] == versus["chosen"]:
        return [
            f"**Best vs the recipe:** the recipe's configuration (trial `{versus['trial']}`) is the chosen one: the "
            "search found nothing better over the seeds.",
            "",
        ]
    points = metric.endswith("_acc")  # an accuracy's difference in percentage points; a loss's as it is

    def amount(x: float, sign: bool = True) -> str:
        return f"{100 * x:{'+' if sign else ''}.2f} points" if points else f"{x:{'+' if sign else ''}.4f}"

    verdict = "within noise" if versus["within_noise"] else "beyond the noise"
    return [
        f"**Best vs the recipe:** {amount(versus['difference'])} of {metric} (mean over {seeds} "
        f"seed{'s' if seeds > 1 else ''}: the chosen `{versus['chosen']}` {versus['chosen_mean']:.4f}, the recipe's "
        f"configuration, trial `{versus['trial']}`, {versus['mean']:.4f}); the noise band of the difference is "
        f"±{amount(versus['band'], sign=False)}: {verdict}.",
        "",
    ]
