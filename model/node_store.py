"""The node-local dataset store: a prepared dataset materialised once per node as memory-mapped arrays.

Trials, the prefix-cache task and the retrain each call ``node_data`` on the node they run on. The
first call there copies the dataset from its shards (local or S3) into ``<root>/dataset-<key>/``, one
shard at a time, as ``.npy`` files per split and column plus ``index.json``; every call then maps those
files read-only. So the driver reads only the manifest, a node's memory holds page cache rather than
copies, and a corpus larger than memory still trains (at disk speed).

- **Once per node:** builders take an exclusive file lock; whoever gets it second finds the store built.
- **Never half-read:** a store is built under a temporary name and renamed into place when complete, so
  a build killed half-way leaves only a temporary folder, removed by the next build.
- **Never another dataset's:** the key is the dataset's fingerprint (``dataset_fingerprint``: config,
  sources, features and shards of its manifest).
- **Kept for reuse:** a store stays until its folder is removed (a cluster's nodes take theirs with them
  on ``ray down``); the root is ``--node-store``, else ``$GENRE_SWEEP_NODE_STORE``, else
  ``genre-sweep-store`` in the system's temp folder.

The arrays equal ``load_data``'s, row for row (tested), so results do not depend on the path taken.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from genre_sweep.data.configs import SPLITS
from genre_sweep.data.shards import Dataset, features_array, open_dataset
from genre_sweep.model.data import SplitArrays, TrainData, clip_index, dataset_fingerprint, row_clips
from genre_sweep.store import StoreOptions

log = logging.getLogger(__name__)

STORE_FORMAT = 1
ROOT_ENV = "GENRE_SWEEP_NODE_STORE"  # the default root, for every process of a node (Ray's workers inherit it)


COLUMNS = ("features", "labels", "clips")


def default_root() -> Path:
    return Path(os.environ.get(ROOT_ENV) or Path(tempfile.gettempdir()) / "genre-sweep-store")


def store_key(ds: Dataset) -> str:
    return dataset_fingerprint(ds.manifest)[:24]


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """An exclusive lock between the processes of this node (released by the kernel if its holder dies)."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _build(ds: Dataset, folder: Path) -> None:
    """Write every split of ``ds`` into ``folder`` via a temporary sibling renamed into place at the end."""
    tmp = folder.with_name(f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    began = time.perf_counter()
    try:
        index: dict = {"format": STORE_FORMAT, "uri": ds.uri, "fingerprint": dataset_fingerprint(ds.manifest)}
        index["splits"] = {}
        for split in SPLITS:
            rows = sum(s["rows"] for s in ds.shards(split))
            shape = (rows, ds.frames, ds.mel_bins)
            if rows == 0:  # nothing to map: an empty array on its own
                np.save(tmp / f"{split}.features.npy", np.zeros(shape, np.float16))
            else:
                features = np.lib.format.open_memmap(tmp / f"{split}.features.npy", "w+", np.float16, shape)
            labels, names, at = np.zeros(rows, np.int64), [], 0
            for shard in ds.shards(split):  # one shard in memory at a time
                table = ds.read_shard(shard, ["features", "label", "track_id", "variant"])
                n = table.num_rows
                features[at : at + n] = features_array(table)
                labels[at : at + n] = table.column("label").to_numpy()
                names += row_clips(table)
                at += n
            if rows:
                features.flush()
                del features
            clip_names, clips = clip_index(names)
            np.save(tmp / f"{split}.labels.npy", labels)
            np.save(tmp / f"{split}.clips.npy", clips)
            index["splits"][split] = {"rows": rows, "clip_names": list(clip_names)}
        index["built_s"] = round(time.perf_counter() - began, 2)
        (tmp / "index.json").write_text(json.dumps(index))
        os.rename(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _remove_interrupted(root: Path, folder: Path) -> None:
    for stale in root.glob(f".{folder.name}.tmp-*"):  # builds killed half-way (we hold the lock: none is running)
        shutil.rmtree(stale, ignore_errors=True)
        log.info("node store: removed an interrupted build, %s", stale.name)


def node_data(
    uri: str, options: StoreOptions = StoreOptions(), splits=("train", "val", "test"), root: Path | str | None = None
) -> TrainData:
    """The named splits of the dataset at ``uri``, memory-mapped from this node's store (built if missing)."""
    ds = open_dataset(uri, options)
    root = Path(root or default_root())
    folder = root / f"dataset-{store_key(ds)}"
    if not (folder / "index.json").exists():
        with _exclusive(root / f"{folder.name}.lock"):
            if not (folder / "index.json").exists():
                _remove_interrupted(root, folder)
                _build(ds, folder)
                log.info("node store: %s materialised in %s (%.1f MB)", uri, folder, _size(folder) / 1e6)
    index = json.loads((folder / "index.json").read_text())
    loaded = {}
    for split in splits:
        if split not in index["splits"]:
            raise ValueError(f"split {split!r} is not in the dataset {uri}")
        rows = index["splits"][split]["rows"]
        arrays = {c: np.load(folder / f"{split}.{c}.npy", mmap_mode="r" if rows else None) for c in COLUMNS}
        loaded[split] = SplitArrays(clip_names=tuple(index["splits"][split]["clip_names"]), **arrays)
    return TrainData(loaded, tuple(ds.genres), ds.frames, ds.mel_bins, index["fingerprint"])


@dataclasses.dataclass(frozen=True)
class NodeData:
    """Where a task finds its data: the dataset's URI, how to reach it, and the node-local store's root. Small:
    this, not the data, is what the driver sends to trials and the retrain."""

    uri: str
    options: StoreOptions = StoreOptions()
    root: str | None = None

    def load(self, splits: tuple[str, ...]) -> TrainData:
        return node_data(self.uri, self.options, splits, self.root)


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir())
