"""The sweep record: what a sweep is, resolved once when it starts and written into its folder.

``<storage>/<name>/genre-sweep.json`` holds the sweep's resolved settings, its search space with the fixed
values, the trial template (the complete ``TrainConfig`` every trial starts from: a trial trains
``replace(template, **its searched values)``, a retrain ``replace(template, **the chosen values, seed=s)``),
the dataset's location and fingerprint, the package version and the study's URL. ``--resume`` and ``retrain``
take all of it from there: a recorded flag left out takes the record's value, one given must equal it, a
``--space`` given must hold the same space, and the data must have the recorded fingerprint; a contradiction is
refused in one line, before Ray starts. The trial count, concurrency and retries are recorded too, because Tune
restores them on resume (a different value would be ignored). Flags that do not change what a trial computes
(resources, retrain seeds, the confirmation, the node store, the study's URL, the S3 endpoint) may differ.

Only folders with this file are opened by ``--resume`` and ``retrain``: they unpickle Tune's state there.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from typing import Any, TypeVar

import pyarrow.fs as pafs
import sqlalchemy

from genre_sweep import __version__
from genre_sweep.config import ConfigError, new_default, new_defaults, recorded_fields, replace_typed, resolve
from genre_sweep.data.shards import Dataset
from genre_sweep.model.configs import TrainConfig
from genre_sweep.model.data import dataset_fingerprint
from genre_sweep.store import StoreError, filesystem, join, read_bytes, write_to
from genre_sweep.tune.configs import RetrainConfig, SweepConfig, SweepError
from genre_sweep.tune.schedulers import label, refuse_unused_flags
from genre_sweep.tune.space import SearchSpace, load_space

RECORD = "genre-sweep.json"
WRITER = "genre-sweep sweep"
FORMAT = 2  # 1: the marker alone (name, version, date, study), before the record
# A run's own place and reach, never part of what a trial computes: set from today's flags, not the record.
WHERE = ("shards", "out", "resume", "s3_endpoint", "s3_region")

C = TypeVar("C", bound=RetrainConfig)


@dataclasses.dataclass(frozen=True)
class SweepRecord:
    name: str
    version: str  # of genre-sweep, which wrote it
    created: str
    study_url: str  # a password in it is hidden
    dataset: dict[str, str]  # shards (where the sweep read them) and fingerprint (dataset_fingerprint)
    settings: dict[str, Any]  # the recorded flags, resolved (recorded_fields of SweepConfig)
    space: dict[str, Any]  # SearchSpace.as_record
    template: dict[str, Any]  # TrainConfig fields but WHERE's

    @property
    def search_space(self) -> SearchSpace:
        return SearchSpace.from_record(self.space)

    def train_config(self, cfg: RetrainConfig, **values: Any) -> TrainConfig:
        """The template on ``cfg``'s shards and store, with ``values`` (searched values, a seed, ``out``) put in."""
        return replace_typed(resolve(TrainConfig, {**self.template, **where(cfg)}), values)

    def as_json(self) -> bytes:
        return json.dumps({"written_by": WRITER, "format": FORMAT, **dataclasses.asdict(self)}, indent=2).encode()


def where(cfg: RetrainConfig) -> dict[str, Any]:
    """A training config's ``WHERE`` fields for ``cfg``'s run: its shards and store (``out`` a placeholder)."""
    return {"shards": cfg.shards, "out": "-", "s3_endpoint": cfg.s3_endpoint, "s3_region": cfg.s3_region}


def new_sweep(cfg: SweepConfig) -> tuple[SweepConfig, SearchSpace]:
    """A new sweep's config with every recorded setting resolved (defaults where not given; ``max_t`` from the
    space), and its space, read once from ``--space``."""
    space = load_space(cfg.space)
    refuse_unused_flags(cfg)  # e.g. --reduction-factor with --scheduler median: recorded, and doing nothing
    cfg = new_defaults(cfg)
    cfg = dataclasses.replace(cfg, mode=cfg.direction, max_t=cfg.max_t or space.max_epochs())
    if cfg.grace_period > cfg.max_t:  # ASHA would refuse it with an AssertionError once Ray is up
        raise ConfigError(
            f"--grace-period {cfg.grace_period} is above the most epochs a trial runs ({cfg.max_t}: "
            f"{'--max-t' if cfg.max_t != space.max_epochs() else 'the space'}); {label(cfg.scheduler)} could never "
            "stop a trial"
        )
    return cfg, space


def template(cfg: RetrainConfig, space: SearchSpace) -> TrainConfig:
    """The complete training config every trial of a sweep with ``cfg`` and ``space`` starts from."""
    values = where(cfg) | {"pretrained": cfg.pretrained, "seed": cfg.seed, "device": cfg.device}
    values |= {"metric": cfg.metric, "mode": cfg.direction}
    try:
        return resolve(TrainConfig, {**values, **space.fixed})
    except ConfigError as e:
        raise ConfigError(f"the trial template: {e}") from e


def make_record(cfg: SweepConfig, space: SearchSpace, dataset: Dataset, study_url: str) -> SweepRecord:
    """The record of a new sweep (``cfg`` resolved by ``new_sweep``) on ``dataset``, its study at ``study_url``."""
    trial = dataclasses.asdict(template(cfg, space))
    return SweepRecord(
        name=cfg.name,
        version=__version__,
        created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        study_url=sqlalchemy.engine.make_url(study_url).render_as_string(hide_password=True),
        dataset={"shards": dataset.uri, "fingerprint": dataset_fingerprint(dataset.manifest)},
        settings={name: getattr(cfg, name) for name in recorded_fields(SweepConfig)},
        space=space.as_record(),
        template={k: v for k, v in trial.items() if k not in WHERE},
    )


def write_record(cfg: RetrainConfig, record: SweepRecord) -> None:
    """Write the record into ``cfg.root``, whole or not at all (local or S3)."""
    try:
        write_to(join(cfg.root, RECORD), record.as_json(), cfg.options)
    except OSError as e:
        raise StoreError(f"cannot write to the sweep's storage {cfg.root}: {e}") from e


def has_record(cfg: RetrainConfig) -> bool:
    """Whether ``cfg.root`` holds a sweep record (of any version)."""
    fs, path = filesystem(join(cfg.root, RECORD), cfg.options)
    try:
        return fs.get_file_info(path).type != pafs.FileType.NotFound
    except OSError as e:
        raise StoreError(f"cannot read the sweep's storage {cfg.root}: {e}") from e


def read_record(cfg: RetrainConfig, action: str) -> SweepRecord:
    """The record of ``cfg.root``; SweepError when the folder is not a sweep of ours, or one without a record."""
    where = join(cfg.root, RECORD)
    try:
        raw = json.loads(read_bytes(where, cfg.options))
        if not isinstance(raw, dict) or raw.get("written_by") != WRITER:
            raise ValueError("another writer")
    except FileNotFoundError:
        raise SweepError(
            f"{action}: {cfg.root} was not written by `genre-sweep sweep` (no {RECORD}); its Tune state is "
            "unpickled on resume and retrain, so only our own sweep folders are opened"
        ) from None
    except (ValueError, TypeError) as e:
        raise SweepError(f"{action}: {where} is not a genre-sweep record ({e})") from e
    except OSError as e:
        raise StoreError(f"{action}: cannot read {where}: {e}") from e
    if raw.get("format") != FORMAT:
        why = (
            "without a sweep record, so what its trials ran is unknown; start a new sweep (another --name)"
            if raw.get("format", 1) < FORMAT
            else f"in a newer record format ({raw.get('format')}); use that version of genre-sweep"
        )
        raise SweepError(f"{action}: {cfg.root} was written by genre-sweep {raw.get('version', '?')} {why}")
    fields = {f.name for f in dataclasses.fields(SweepRecord)}
    try:
        return SweepRecord(**{k: raw[k] for k in fields})
    except KeyError as e:
        raise SweepError(f"{action}: {where} lacks {e}; the record is damaged") from None


def reconcile(cfg: C, record: SweepRecord, dataset: Dataset, action: str) -> C:
    """``cfg`` with everything a trial computes taken from ``record``: a recorded flag left out takes the record's
    value; one given that differs, a ``--space`` holding another space, or a ``dataset`` (what ``--shards`` names,
    else the recorded location) holding other data than the record's fingerprint is a SweepError naming the field,
    the recorded value and the given one."""
    taken = {}
    for name in recorded_fields(type(cfg)):
        # a setting added since the record was written takes its default, which is what sweeps did then
        given, recorded = getattr(cfg, name), record.settings.get(name, new_default(type(cfg), name))
        if given is not None and given != recorded:
            raise SweepError(
                f"{action}: --{name.replace('_', '-')} {given} contradicts the sweep record of {cfg.root}, which has "
                f"{'unset' if recorded is None else recorded}; leave it out to take the record's"
            )
        taken[name] = recorded
    if cfg.space is not None:
        differences = load_space(cfg.space).differences(record.search_space)
        if differences:
            what, given, recorded = differences[0]
            more = "" if len(differences) == 1 else f"; and {len(differences) - 1} more"
            raise SweepError(
                f"{action}: --space {cfg.space} is not the space of the sweep record of {cfg.root} ({what}: {given} "
                f"given, {recorded} in the record{more}); leave --space out to take the record's"
            )
    fingerprint, recorded_data = dataset_fingerprint(dataset.manifest), record.dataset["fingerprint"]
    if fingerprint != recorded_data:
        where = f"--shards {cfg.shards}" if cfg.shards else f"the sweep's dataset {dataset.uri}"
        raise SweepError(
            f"{action}: {where} holds other data than the sweep record of {cfg.root} (fingerprint {fingerprint[:12]}, "
            f"recorded {recorded_data[:12]} at {record.dataset['shards']}; prepared again since?)"
        )
    return dataclasses.replace(cfg, shards=cfg.shards or record.dataset["shards"], **taken)
