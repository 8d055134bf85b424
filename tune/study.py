"""The sweep's Optuna study and the marker of the sweep's folder: where they live and how they survive.

- **The study** is an RDB storage. The default is SQLite: beside the results with local storage (so it
  lives and dies with them), or on the driver's disk with S3 storage, where it would die with the head
  node. So with S3 storage a SQLite study is *backed up*: copied whole (SQLite's online backup) to
  ``<storage>/<name>-optuna.db`` after every trial the study records as finished, and restored from
  there by ``--resume`` and ``retrain`` when the driver's copy is missing (a new head, another machine).
  A server URL (PostgreSQL) given with ``--study-storage`` needs no copy.
- **The marker** ``<storage>/<name>/genre-sweep.json`` is written when a sweep starts. ``--resume`` and
  ``retrain`` unpickle Tune's state from that folder, and refuse a folder without it. It names the
  study the sweep used, so a resume from another working directory finds the same study.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import logging
import sqlite3
import time
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.trial import TrialState

from genre_sweep import __version__
from genre_sweep.store import StoreError, StoreOptions, is_s3, join, read_bytes, with_retries, write_to
from genre_sweep.tune.configs import RetrainConfig, SweepError

log = logging.getLogger(__name__)

MARKER = "genre-sweep.json"
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


def close_interrupted(name: str, url: str) -> None:
    """After a finished sweep nothing runs: a study trial still RUNNING was cut off by a killed driver."""
    study = optuna.load_study(study_name=name, storage=url)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(t.number, state=TrialState.FAIL)
        log.warning("study trial %d was interrupted (the sweep's driver stopped mid-trial): marked failed", t.number)


def write_marker(cfg: RetrainConfig, study_url: str) -> None:
    """Mark ``cfg.root`` as a sweep of ours, naming its study (a password in the URL is not written)."""
    marker = {
        "written_by": "genre-sweep sweep",
        "version": __version__,
        "name": cfg.name,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "study_url": sqlalchemy.engine.make_url(study_url).render_as_string(hide_password=True),
    }
    try:
        write_to(join(cfg.root, MARKER), json.dumps(marker, indent=2).encode(), cfg.options)
    except OSError as e:
        raise StoreError(f"cannot write to the sweep's storage {cfg.root}: {e}") from e


def read_marker(cfg: RetrainConfig, action: str) -> dict[str, Any]:
    """The marker of ``cfg.root``; SweepError when the folder is not a sweep this project wrote."""
    try:
        marker = json.loads(read_bytes(join(cfg.root, MARKER), cfg.options))
        if marker.get("written_by") != "genre-sweep sweep":
            raise ValueError("another writer")
    except FileNotFoundError:
        raise SweepError(
            f"{action}: {cfg.root} was not written by `genre-sweep sweep` (no {MARKER}); its Tune state is "
            "unpickled on resume and retrain, so only our own sweep folders are opened"
        ) from None
    except (ValueError, TypeError) as e:
        raise SweepError(f"{action}: {cfg.root}/{MARKER} is not a genre-sweep marker ({e})") from e
    except OSError as e:
        raise StoreError(f"{action}: cannot read {cfg.root}/{MARKER}: {e}") from e
    return marker


def resumed_study_url(cfg: RetrainConfig, marker: dict[str, Any]) -> str:
    """The study a resumed or retrained sweep uses: the one its marker names (where Tune's pickled searcher will
    reconnect), unless ``--study-storage`` names another; restored from the storage's copy when missing."""
    url = cfg.study_storage or marker.get("study_url") or cfg.study_url()
    if "***" in url:  # a password was hidden in the marker: the flag must give it
        url = cfg.study_url()
    backup = study_backup(cfg, url)
    if backup is not None:
        backup.restore_if_missing()
    return url
