"""The sweep's Optuna study: where it lives and how it survives.

- **The study** is an RDB storage. The default is SQLite: beside the results with local storage (so it
  lives and dies with them), or on the driver's disk with S3 storage, where it would die with the head
  node. So with S3 storage a SQLite study is *backed up*: copied whole (SQLite's online backup) to
  ``<storage>/<name>-optuna.db`` after every trial the study records as finished, and restored from
  there by ``--resume`` and ``retrain`` when the driver's copy is missing (a new head, another machine).
  A server URL (PostgreSQL) given with ``--study-storage`` needs no copy.
- **The sweep record** (``tune.record``) names the study the sweep used, so a resume from another working
  directory finds the same study.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sqlite3
import time
from pathlib import Path

import optuna
import sqlalchemy
from optuna.trial import TrialState

from genre_sweep.store import StoreError, StoreOptions, is_s3, read_bytes, with_retries, write_to
from genre_sweep.tune import internals
from genre_sweep.tune.configs import RetrainConfig, SweepError

log = logging.getLogger(__name__)

SQLITE = "sqlite:///"


@dataclasses.dataclass(frozen=True)
class StudyBackup:
    """A local SQLite study and the copy of it kept in the sweep's storage (see the module's docstring)."""

    db_path: str
    uri: str
    options: StoreOptions

    def save(self) -> bool:
        """Copy the study to the storage now (a consistent snapshot, even while the sweep writes); an outage is
        retried and then skipped with a warning: the next finished trial copies it again."""
        with contextlib.closing(sqlite3.connect(self.db_path)) as src:
            with contextlib.closing(sqlite3.connect(":memory:")) as snapshot:
                src.backup(snapshot)
                data = snapshot.serialize()
        return with_retries(
            lambda: write_to(self.uri, data, self.options),
            f"copy the study to {self.uri}",
            waits=(1.0, 2.0, 4.0),
            fatal=False,
        )

    def restore_if_missing(self) -> None:
        """The storage's copy, put where the study is expected, when the driver has none (a replaced head)."""
        local = Path(self.db_path)
        if local.exists() and local.stat().st_size > 0:
            return
        try:
            data = read_bytes(self.uri, self.options)
        except FileNotFoundError:
            raise SweepError(
                f"the study {local} is missing and the sweep's storage holds no copy of it ({self.uri})"
            ) from None
        except OSError as e:
            raise StoreError(f"cannot read the study's copy {self.uri}: {e}") from e
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(data)
        log.info("study restored from %s to %s (%d bytes)", self.uri, local, len(data))


def study_backup(cfg: RetrainConfig, url: str) -> StudyBackup | None:
    """The backup of a SQLite study kept off the sweep's storage (S3 storage); None when none is needed."""
    if not (url.startswith(SQLITE) and is_s3(cfg.storage)):
        return None
    return StudyBackup(url.removeprefix(SQLITE), cfg.root + "-optuna.db", cfg.options)


def study_exists(url: str, name: str) -> bool:
    """Whether the storage at ``url`` holds a study named ``name``; a SQLite file is only read (none: no study)."""
    if url.startswith(SQLITE):
        path = Path(url.removeprefix(SQLITE))
        if not path.exists():
            return False
        try:
            with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as con:
                return con.execute("SELECT 1 FROM studies WHERE study_name = ?", (name,)).fetchone() is not None
        except sqlite3.Error:  # not an Optuna database yet (empty)
            return False
    return name in optuna.study.get_all_study_names(storage=open_storage(url))


def open_storage(url: str, attempts: int = 4) -> optuna.storages.RDBStorage:
    """The study's RDB storage. Its set-up creates tables, which another process opening the same SQLite file
    at that moment (optuna-dashboard, a script) can make fail once: retried, with a log line."""
    if url.startswith(SQLITE):
        Path(url.removeprefix(SQLITE)).parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, attempts + 1):
        try:
            return optuna.storages.RDBStorage(url)
        except sqlalchemy.exc.OperationalError as e:
            if attempt == attempts:
                raise SweepError(f"--study-storage {url}: cannot open the study: {e.orig}") from e
            log.warning("study storage %s busy (%s); retrying", url, e.orig)
            time.sleep(attempt)
    raise AssertionError("unreachable")


CUT_OFF = "cut off by a stopped driver before the sweep saved it; Tune drew a new trial in its place"


def close_interrupted(name: str, url: str) -> None:
    """After a finished sweep nothing runs: a study trial still RUNNING was drawn by a driver that was killed
    before Tune's next snapshot recorded it (Tune resumes every trial it recorded, and tells the study itself), so
    the resumed sweep drew another in its place. It is marked failed, with that reason."""
    study = optuna.load_study(study_name=name, storage=url)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        internals.running_trial(study, t).set_user_attr("fail_reason", CUT_OFF)
        study.tell(t.number, state=TrialState.FAIL)
        log.warning("study trial %d: %s: marked failed", t.number, CUT_OFF)


def resumed_study_url(cfg: RetrainConfig, recorded_url: str) -> str:
    """The study a resumed or retrained sweep uses: the one its record names (where Tune's pickled searcher will
    reconnect), unless ``--study-storage`` names another; restored from the storage's copy when missing."""
    url = cfg.study_storage or recorded_url or cfg.study_url()
    if "***" in url:  # a password was hidden in the record: the flag must give it
        url = cfg.study_url()
    backup = study_backup(cfg, url)
    if backup is not None:
        backup.restore_if_missing()
    return url
