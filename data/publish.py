"""Where ``prepare`` writes: a fresh version folder under the destination, published by its manifest.

A dataset at ``<out>`` is ``<out>/manifest.json`` plus the shards of the version folder it names
(``<out>/v-<time>-<id>/<split>/part-*.parquet``). A run writes its shards into a new version folder,
invisible to every reader, then publishes it by writing the manifest (one PUT on S3, a temporary file
renamed locally), and only then removes older versions and what interrupted runs left. So:

- an existing dataset stays readable, unchanged, until the new one is complete, and ``--overwrite``
  never deletes anything before the source has been read and every new shard written;
- a run that stops (an error, a store outage, a killed process) leaves the old dataset as it was; a run
  that fails removes its own partial version (``Destination.discard``), unless the store went away;
- a run marks its version with the key of its inputs and settings (``run.json``); a later run with the same
  key continues that version (``Destination.resume_or_start``), taking up the blocks it completed (their
  records under ``done/``, written by ``data.pipeline.ShardSink``), and once published removes what its
  manifest does not list (``Destination.tidy``); whatever else is left is removed by the next successful run;
- two runs into one destination: the later publish finds the manifest changed since it opened the
  destination and fails in one line, publishing nothing (compare-and-swap: locally under an exclusive
  lock on the destination folder, so the check and the rename are one step for every prepare on this
  machine; on S3 a conditional PUT, If-Match on the manifest's ETag seen at the start, or If-None-Match
  when there was none, so the store itself refuses the later of two publishes);
- a bucket root, or a prefix holding anything that is not a genre-sweep dataset, is refused.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import re
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pyarrow.fs as pafs

from genre_sweep.data.configs import SPLITS
from genre_sweep.data.shards import MANIFEST
from genre_sweep.errors import one_line
from genre_sweep.store import (
    StoreError,
    StoreOptions,
    is_s3,
    join,
    list_files,
    own_location,
    probe_writable,
    put_if_unchanged,
    s3_etag,
    with_retries,
    write_bytes,
)

log = logging.getLogger(__name__)

RUN = "run.json"  # in an unpublished version: the key of the inputs and settings that run prepares
DONE = "done"  # in an unpublished version: one record per completed block (data.pipeline.ShardSink)
VERSION = re.compile(r"v-\d{8}T\d{6}-[0-9a-f]{8}")
# shards of datasets written before version folders existed: <out>/<split>/part-*.parquet
LEGACY_SHARD = re.compile(rf"({'|'.join(SPLITS)})/part-[^/]+\.parquet")


def new_version() -> str:
    return f"v-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:8]}"


def _ours(relative: str) -> bool:
    """A file a genre-sweep dataset (or an interrupted prepare) writes under its destination."""
    top = relative.split("/", 1)[0]
    return (
        relative == MANIFEST
        or relative.startswith(f".{MANIFEST}.tmp-")  # a manifest write that was killed (store.write_atomic)
        or bool(VERSION.fullmatch(top))
        or bool(LEGACY_SHARD.fullmatch(relative))
    )


def _read_json(fs: pafs.FileSystem, path: str) -> dict[str, Any]:
    """A small JSON record a run wrote; {} when it is missing or cut off (a run killed while writing it)."""
    try:
        with fs.open_input_stream(path) as f:
            return _parse(f.read())
    except FileNotFoundError:
        return {}


_WRITING: set[str] = set()  # the versions the runs in this process are writing now
ABANDONED_AFTER_S = 600.0  # a version another host's run has not added to for this long is taken up


def _abandoned(fs: pafs.FileSystem, version: str, run: dict[str, Any]) -> bool:
    """Whether the run that wrote ``version`` is over, so another may take it up: its process on this host is gone,
    or (another host's) it has written nothing there for ``ABANDONED_AFTER_S``."""
    if run.get("host") == socket.gethostname():
        if run.get("pid") == os.getpid():  # this process: over unless a run in it still writes there
            return version not in _WRITING
        try:
            os.kill(int(run.get("pid", 0)), 0)
        except (ProcessLookupError, ValueError, OverflowError):
            return True
        except PermissionError:
            return False
        return int(run.get("pid", 0)) <= 0
    newest = max((f.mtime.timestamp() for f in list_files(fs, version) if f.mtime is not None), default=0.0)
    return time.time() - newest > ABANDONED_AFTER_S


def _parse(data: bytes) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _read_manifest(fs: pafs.FileSystem, root: str) -> bytes | None:
    """The destination's manifest as it is now; None when it has none."""
    try:
        with fs.open_input_stream(join(root, MANIFEST)) as f:
            return f.read()
    except FileNotFoundError:
        return None


def _digest(manifest: bytes | None) -> str:
    return "none" if manifest is None else hashlib.sha256(manifest).hexdigest()[:12]


@contextlib.contextmanager
def _exclusive(fs: pafs.FileSystem, root: str) -> Iterator[None]:
    """An exclusive lock on a local destination folder (every prepare publishing there takes it)."""
    fd = os.open(root, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


@dataclasses.dataclass
class Destination:
    """A checked destination, the version folder this run writes its shards into, and the manifest it held when
    this run opened it (None: none), which must still be there when the run publishes."""

    uri: str
    fs: pafs.FileSystem
    root: str
    version: str
    options: StoreOptions = StoreOptions()
    seen: bytes | None = None
    seen_etag: str | None = None  # on S3: the ETag of ``seen``, the condition of the publishing PUT
    published: bool = False

    @property
    def version_uri(self) -> str:
        return join(self.uri, self.version)

    def publish(self, manifest: bytes) -> None:
        """Make the new version the dataset (the manifest, written whole), unless another run published there since
        this one opened it; then remove everything older."""
        where = f"{self.uri}/{MANIFEST}"
        try:
            with_retries(lambda: self._publish(where, manifest), f"publish {where}", waits=(1.0, 2.0, 4.0))
        except OSError as e:
            raise StoreError(f"cannot write {where} (nothing was published; run again): {one_line(e)}") from e
        self.remove_all_but_current()

    def _publish(self, where: str, manifest: bytes) -> None:
        """One attempt: the compare-and-swap of the manifest (see the module's docstring)."""
        if is_s3(self.uri):
            self.published = put_if_unchanged(where, manifest, self.options, self.seen_etag) is not None
            if not self.published:
                now = _read_manifest(self.fs, self.root)
                if now == manifest:  # our own PUT, whose answer was lost and whose retry found it done
                    self.published = True
                    return
                raise self._changed(where, now)
        else:
            with _exclusive(self.fs, self.root):
                now = _read_manifest(self.fs, self.root)
                if now != self.seen:
                    raise self._changed(where, now)
                write_bytes(self.fs, join(self.root, MANIFEST), manifest)
                self.published = True

    def _changed(self, where: str, now: bytes | None) -> StoreError:
        return StoreError(
            f"{where} changed while this prepare ran (sha256 {_digest(self.seen)} when it started, "
            f"{_digest(now)} now): another prepare published there; nothing was published"
        )

    def discard(self) -> None:
        """Remove this run's unpublished version folder (a failed run's shards); never a published one. A failure
        here only leaves litter, which the next successful run removes."""
        if self.published:
            return
        try:
            if _parse(_read_manifest(self.fs, self.root) or b"{}").get("version_dir") == self.version:
                return  # published after all (by this run, or by another that took its version up): never removed
            with contextlib.suppress(FileNotFoundError):  # first: a removal cut off is never taken up half
                self.fs.delete_file(join(self.root, self.version, RUN))
            self.fs.delete_dir(join(self.root, self.version))
        except FileNotFoundError:
            return
        except OSError as e:
            log.warning("prepare: could not remove this run's unpublished %s under %s: %s", self.version, self.uri, e)
            return
        log.info("prepare: removed this run's unpublished %s under %s", self.version, self.uri)

    def resume_or_start(self, key: str) -> list[dict[str, Any]]:
        """Continue the unpublished version an earlier run of the same inputs and settings (``key``) left, if there
        is one: this run then writes there, and gets back the record of every block that run completed (its
        shards, rejections and tracks), whose tracks it need not process again. Otherwise this run's own version
        is marked with ``key``, for a later run to continue."""
        current = _parse(self.seen).get("version_dir") if self.seen else None
        try:
            for info in self.fs.get_file_info(pafs.FileSelector(self.root, allow_not_found=True)):
                top = info.base_name
                if info.type != pafs.FileType.Directory or not VERSION.fullmatch(top) or top in (self.version, current):
                    continue
                run = _read_json(self.fs, join(self.root, top, RUN))
                if run.get("key") != key or not _abandoned(self.fs, join(self.root, top), run):
                    continue
                with contextlib.suppress(OSError):  # this run's own version holds nothing yet (its probe's folder)
                    self.fs.delete_dir(join(self.root, self.version))
                self.version = top
                _WRITING.add(join(self.root, top))
                done = self.fs.get_file_info(pafs.FileSelector(join(self.root, top, DONE), allow_not_found=True))
                return [_read_json(self.fs, f.path) for f in sorted(done, key=lambda f: f.path)]
            run = {"key": key, "host": socket.gethostname(), "pid": os.getpid()}
            write_bytes(self.fs, join(self.root, self.version, RUN), json.dumps(run).encode())
            _WRITING.add(join(self.root, self.version))
        except OSError as e:
            raise StoreError(f"cannot prepare the output store {self.uri}: {one_line(e)}") from e
        return []

    def close(self) -> None:
        """This run no longer writes its version (published, discarded or kept for a rerun)."""
        _WRITING.discard(join(self.root, self.version))

    def tidy(self, shards: set[str]) -> None:
        """After the publish: remove from the published version what its manifest does not list (the run marker,
        the blocks' records, a shard an interrupted earlier run left under another name); only litter if it fails."""
        version = join(self.root, self.version)
        try:
            for f in list_files(self.fs, version):
                if f.path[len(version) + 1 :] not in shards:
                    self.fs.delete_file(f.path)
            with contextlib.suppress(FileNotFoundError):
                self.fs.delete_dir(join(version, DONE))
        except OSError as e:
            log.warning("prepare: the dataset is published, but %s holds files it does not list: %s", version, e)

    def remove_all_but_current(self) -> None:
        """Older versions, legacy shards and interrupted runs' folders; a failure here only leaves litter."""
        stale: set[str] = set()
        try:
            for f in list_files(self.fs, self.root):
                relative = f.path[len(self.root) + 1 :]
                top = relative.split("/", 1)[0]
                if relative == MANIFEST or top == self.version or top in stale:
                    continue
                stale.add(top)
                (self.fs.delete_file if top == relative else self.fs.delete_dir)(join(self.root, top))
        except OSError as e:
            log.warning("prepare: the new dataset is published, but older files under %s remain: %s", self.uri, e)
            return
        if stale:
            log.info("prepare: removed %s under %s", ", ".join(sorted(stale)), self.uri)


def open_destination(uri: str, options: StoreOptions, overwrite: bool) -> Destination:
    """Check that ``uri`` may receive a dataset, before any work: reachable and writable; not a bucket root; empty,
    or holding only a genre-sweep dataset (replaced only with ``overwrite``) or what an interrupted run left.

    Removes nothing: see ``Destination.publish``.
    """
    fs, root = own_location(uri, options, "shards")
    try:
        existing = [f.path[len(root) + 1 :] for f in list_files(fs, root)]
    except OSError as e:
        raise StoreError(f"cannot reach the output store {uri}: {e}") from e
    foreign = [p for p in existing if not _ours(p)]
    if foreign:
        raise StoreError(
            f"output {uri} holds files that are not a genre-sweep dataset ({len(foreign)}, e.g. {foreign[0]}); "
            "nothing is written there: choose an empty folder, or a dataset's own"
        )
    holds_dataset = MANIFEST in existing
    if holds_dataset and not overwrite:
        raise StoreError(
            f"output {uri} already holds a dataset; pass --overwrite to replace it "
            "(it stays readable until the new one is complete)"
        )
    version = new_version()
    try:
        seen_etag = s3_etag(join(uri, MANIFEST), options) if holds_dataset and is_s3(uri) else None
        seen = _read_manifest(fs, root) if holds_dataset else None
        probe_writable(fs, join(root, version))
    except OSError as e:
        raise StoreError(f"cannot write to the output store {uri}: {e}") from e
    if existing and not holds_dataset:
        log.info("prepare: %s holds an interrupted run's files; they are removed once this run is published", uri)
    return Destination(uri, fs, root, version, options, seen, seen_etag)
