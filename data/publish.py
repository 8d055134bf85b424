"""Where ``prepare`` writes: a fresh version folder under the destination, published by its manifest.

A dataset at ``<out>`` is ``<out>/manifest.json`` plus the shards of the version folder it names
(``<out>/v-<time>-<id>/<split>/part-*.parquet``). A run writes its shards into a new version folder,
invisible to every reader, then publishes it by writing the manifest (one PUT on S3, a temporary file
renamed locally), and only then removes older versions and what interrupted runs left. So:

- an existing dataset stays readable, unchanged, until the new one is complete, and ``--overwrite``
  never deletes anything before the source has been read and every new shard written;
- a run that stops (an error, a store outage, a killed process) leaves the old dataset as it was and
  its partial version unreferenced; the next successful run removes it;
- a bucket root, or a prefix holding anything that is not a genre-sweep dataset, is refused.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
import uuid

import pyarrow.fs as pafs

from genre_sweep.data.configs import SPLITS
from genre_sweep.data.shards import MANIFEST
from genre_sweep.store import StoreError, StoreOptions, join, list_files, own_location, probe_writable, write_bytes

log = logging.getLogger(__name__)

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


@dataclasses.dataclass(frozen=True)
class Destination:
    """A checked destination and the version folder this run writes its shards into."""

    uri: str
    fs: pafs.FileSystem
    root: str
    version: str

    @property
    def version_uri(self) -> str:
        return join(self.uri, self.version)

    def publish(self, manifest: bytes) -> None:
        """Make the new version the dataset (the manifest, written whole), then remove everything older."""
        try:
            write_bytes(self.fs, join(self.root, MANIFEST), manifest)
        except OSError as e:
            raise StoreError(f"cannot write {self.uri}/{MANIFEST} (the shards are written; run again): {e}") from e
        self.remove_all_but_current()

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
        probe_writable(fs, join(root, version))
    except OSError as e:
        raise StoreError(f"cannot write to the output store {uri}: {e}") from e
    if existing and not holds_dataset:
        log.info("prepare: %s holds an interrupted run's files; they are removed once this run is published", uri)
    return Destination(uri, fs, root, version)
