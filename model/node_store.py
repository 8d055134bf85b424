"""The node-local store: a prepared dataset, and its frozen-prefix cache, materialised once per node as
memory-mapped arrays.

Trials and the retrain call ``NodeData.load`` on the node they run on. The first call there copies the
dataset from its shards (local or S3) into ``<root>/dataset-<key>/``, one shard at a time, as ``.npy``
files per split and column plus ``index.json``; when the sweep uses the prefix cache, the first call
also computes the states entering the lowest adapted layer, on its own device, into
``<root>/prefix-<key>/<split>.states.npy``. Every call then maps those files read-only. So the driver
reads only the manifest, a node's memory holds page cache rather than copies, and a corpus larger than
memory still trains (at disk speed).

- **Once per node:** builders take an exclusive file lock; whoever gets it second finds the store built.
  Each build is a line of ``<root>/builds.jsonl``.
- **Never half-read:** everything is built under a temporary name and renamed into place when complete,
  so a build killed half-way leaves only a temporary file or folder, removed by the next build.
- **Never another dataset's:** the dataset's key is its fingerprint (``dataset_fingerprint``: config,
  sources, features and shards of its manifest); the cache's key adds the exact prefix weights.
- **Within the disk:** a dataset that does not fit the disk is an error naming both; a cache that does not
  fit (``--node-disk-gb``, or the free disk) is turned off with one warning, and training reads features.
  A cache larger than the memory available for the page cache is still used, with one line saying that it
  will be read from the disk each epoch (``page_cache_note``).
- **Kept for reuse:** a store stays until its folder is removed (a cluster's nodes take theirs with them
  on ``ray down``); the root is ``--node-store``, else ``$GENRE_SWEEP_NODE_STORE``, else
  ``genre-sweep-store`` in the system's temp folder.

The arrays equal ``load_data``'s and ``build_cache``'s, row for row (tested), so results do not depend on
the path taken.
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
from genre_sweep.model.configs import AdapterSettings
from genre_sweep.model.data import SplitArrays, TrainData, clip_index, dataset_fingerprint, row_clips
from genre_sweep.model.device import resolve_device
from genre_sweep.model.dora_ast import GenreClassifier, backbone_config, build_model, sequence_length
from genre_sweep.model.prefix_cache import PrefixCache, cache_key, compute_states, state_shape
from genre_sweep.store import StoreError, StoreOptions

log = logging.getLogger(__name__)

STORE_FORMAT = 1
ROOT_ENV = "GENRE_SWEEP_NODE_STORE"  # the default root, for every process of a node (Ray's workers inherit it)


COLUMNS = ("features", "labels", "clips")
DISK_RESERVE = 10**9  # bytes a node store leaves free on its disk


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


def _temporary(final: Path) -> Path:
    """Where ``final`` is built: a hidden sibling renamed into place when complete, never read before."""
    return final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")


def _remove_interrupted(final: Path) -> None:
    """Remove what builds of ``final`` killed half-way left (the caller holds the lock: none is running)."""
    for stale in final.parent.glob(f".{final.name}.tmp-*"):
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
        log.info("node store: removed an interrupted build, %s", stale.name)


def _record_build(root: Path, what: str, seconds: float, nbytes: int) -> None:
    """One line per build in ``<root>/builds.jsonl``: what was built, when, by which process, how big, how fast."""
    line = {"what": what, "at": time.time(), "pid": os.getpid(), "seconds": round(seconds, 2), "bytes": nbytes}
    with open(root / "builds.jsonl", "a") as f:
        f.write(json.dumps(line) + "\n")


def _write_dataset(ds: Dataset, tmp: Path) -> None:
    """Every split of ``ds`` as ``.npy`` files plus ``index.json`` in ``tmp``, one shard in memory at a time."""
    index: dict = {"format": STORE_FORMAT, "uri": ds.uri, "fingerprint": dataset_fingerprint(ds.manifest)}
    index["splits"] = {}
    for split in SPLITS:
        rows = ds.rows(split)
        shape = (rows, ds.frames, ds.mel_bins)
        if rows == 0:  # nothing to map: an empty array on its own
            np.save(tmp / f"{split}.features.npy", np.zeros(shape, np.float16))
        else:
            features = np.lib.format.open_memmap(tmp / f"{split}.features.npy", "w+", np.float16, shape)
        labels, names, at = np.zeros(rows, np.int64), [], 0
        for shard in ds.shards(split):
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
    (tmp / "index.json").write_text(json.dumps(index))


def dataset_bytes(rows: int, frames: int, mel_bins: int) -> int:
    """What ``rows`` windows take in the store: float16 features, int64 label and clip."""
    return rows * (frames * mel_bins * 2 + 16)


def human(nbytes: float) -> str:
    """A size in GB, or MB below one GB."""
    return f"{nbytes / 1e9:.2f} GB" if nbytes >= 1e9 else f"{nbytes / 1e6:.1f} MB"


@dataclasses.dataclass(frozen=True)
class NodeSizes:
    """What one node's store holds for a sweep: the dataset (every split) and the prefix cache (the splits cached)."""

    dataset: int
    cache: int
    start: int

    @property
    def total(self) -> int:
        return self.dataset + self.cache

    def describe(self) -> str:
        return (
            f"dataset {human(self.dataset)} + prefix cache {human(self.cache)} "
            f"(states entering layer {self.start}'s FFN) = {human(self.total)}"
        )


def node_sizes(ds: Dataset, pretrained: str, start: int, cached=("train", "val", "test")) -> NodeSizes:
    """The expected sizes, from the manifest and the model's config alone (no weights, no data read)."""
    cfg, _ = backbone_config(pretrained, ds.frames, ds.mel_bins)
    rows = {split: ds.rows(split) for split in SPLITS}
    per_window = sequence_length(cfg) * cfg.hidden_size * 2  # bf16
    return NodeSizes(
        dataset_bytes(sum(rows.values()), ds.frames, ds.mel_bins),
        per_window * sum(rows[s] for s in cached),
        start,
    )


def room_for(need: int, root: Path, budget_gb: float | None) -> str | None:
    """None when ``need`` more bytes fit in the node store at ``root``; else why not, as a phrase. They fit when
    the store stays within ``budget_gb`` (when set) and the disk keeps ``DISK_RESERVE`` bytes free."""
    root.mkdir(parents=True, exist_ok=True)
    if budget_gb is not None:
        used = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
        if used + need > budget_gb * 1e9:
            return (
                f"need {human(need)} beside the {human(used)} already there, over the node disk "
                f"budget of {budget_gb:g} GB (--node-disk-gb)"
            )
    free = shutil.disk_usage(root).free
    if need > free - DISK_RESERVE:
        return f"need {human(need)} and {root} has {human(free)} free (keeping {human(DISK_RESERVE)})"
    return None


def memory_available() -> int | None:
    """What this machine's memory has available for the page cache now: the kernel's MemAvailable (free memory plus
    the page cache and reclaimable memory it can give back; what psutil reports as ``available``), or None where
    there is no /proc/meminfo."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def page_cache_note(cache: int, available: int | None) -> str | None:
    """One line when a prefix cache of ``cache`` bytes outgrows the memory ``available`` for the page cache (it is
    still used, but then read from the disk each epoch, at the disk's speed); None when it fits or nothing is
    known."""
    if available is None or cache <= available:
        return None
    return (
        f"the prefix cache ({human(cache)}) is larger than the {human(available)} of memory available for the page "
        "cache: it will be read from disk each epoch (at the disk's speed)"
    )


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
                rows = sum(ds.rows(split) for split in SPLITS)
                why = room_for(dataset_bytes(rows, ds.frames, ds.mel_bins), root, None)
                if why:
                    raise StoreError(
                        f"node store: the dataset {uri} does not fit: its arrays {why}; pass --node-store on a "
                        "larger disk"
                    )
                _remove_interrupted(folder)
                began, tmp = time.perf_counter(), _temporary(folder)
                tmp.mkdir(parents=True)
                try:
                    _write_dataset(ds, tmp)
                    os.rename(tmp, folder)
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
                seconds, size = time.perf_counter() - began, _size(folder)
                _record_build(root, folder.name, seconds, size)
                log.info("node store: %s materialised in %s (%.1f MB in %.1f s)", uri, folder, size / 1e6, seconds)
    index = json.loads((folder / "index.json").read_text())
    loaded = {}
    for split in splits:
        if split not in index["splits"]:
            raise ValueError(f"split {split!r} is not in the dataset {uri}")
        rows = index["splits"][split]["rows"]
        arrays = {c: np.load(folder / f"{split}.{c}.npy", mmap_mode="r" if rows else None) for c in COLUMNS}
        loaded[split] = SplitArrays(clip_names=tuple(index["splits"][split]["clip_names"]), **arrays)
    return TrainData(loaded, tuple(ds.genres), ds.frames, ds.mel_bins, index["fingerprint"])


def node_prefix(
    data: TrainData,
    model: GenreClassifier | str,
    start: int,
    device: str = "auto",
    root: Path | str | None = None,
    budget_gb: float | None = None,
) -> TrainData:
    """``data`` with its frozen-prefix cache (the states entering layer ``start``'s FFN under the frozen weights of
    ``model``, or of a ``pretrained`` name, built here), mapped from this node's store and built there first if
    missing, on this process's ``device``. A trial passes the model it trains, so it is built once.

    Each split's states are one ``.npy`` file under ``<root>/prefix-<key>/``, written under a temporary name
    and renamed when complete, by one process of the node at a time (the others wait, then map it). When the
    missing states do not fit (``room_for``), ``data`` comes back without a cache, with one warning saying why.
    """
    root = Path(root or default_root())
    if isinstance(model, str):
        model = build_model(model, len(data.genres), AdapterSettings(min_layer=start), data.frames, data.mel_bins)
    dev = resolve_device(device)
    key = cache_key(model, data, start, dev)  # states computed on another kind of device are another cache
    folder = root / f"prefix-{key[:24]}"
    shape = state_shape(model)

    def path(split: str) -> Path:
        return folder / f"{split}.states.npy"

    missing = [s for s, arrays in data.splits.items() if len(arrays) and not path(s).exists()]
    if missing:
        rows = sum(len(data.splits[s]) for s in missing)
        why = room_for(rows * shape[0] * shape[1] * 2, root, budget_gb)
        if why:
            log.warning(
                "prefix cache off on this node: the states entering layer %d's FFN %s; each step then also runs the "
                "frozen layers below it (the same mathematics, slower: see bench/train.py)",
                start,
                why,
            )
            return data
        folder.mkdir(parents=True, exist_ok=True)
        with _exclusive(root / f"{folder.name}.lock"):
            model = model.to(dev)
            for split in missing:
                if path(split).exists():  # built while this process waited for the lock
                    continue
                _remove_interrupted(path(split))
                began, tmp = time.perf_counter(), _temporary(path(split))
                try:
                    out = np.lib.format.open_memmap(tmp, "w+", np.uint16, (len(data.splits[split]), *shape))
                    compute_states(model, data.splits[split], start, 32, dev, out=out)
                    out.flush()
                    del out
                    os.rename(tmp, path(split))
                finally:
                    tmp.unlink(missing_ok=True)
                seconds, size = time.perf_counter() - began, path(split).stat().st_size
                _record_build(root, f"{folder.name}/{split}", seconds, size)
                log.info(
                    "node store: prefix cache of %s (states entering layer %d's FFN) built on %s: %.1f MB in %.1f s",
                    split,
                    start,
                    dev,
                    size / 1e6,
                    seconds,
                )
    states = {s: np.load(path(s), mmap_mode="r") for s, arrays in data.splits.items() if len(arrays)}
    slow = page_cache_note(sum(a.nbytes for a in states.values()), memory_available())
    if slow:
        log.warning("node store: %s", slow)
    # the features stay mapped too (they cost nothing until read): the retrain tests the exported model on them
    return data.with_prefix(PrefixCache(start, key, states))


@dataclasses.dataclass(frozen=True)
class NodeData:
    """Where a task finds its data: the dataset's URI, how to reach it, the node-local store's root, and the
    layer where the frozen-prefix cache starts (None: no cache). Small: this, not the data, is what the driver
    sends to trials and the retrain."""

    uri: str
    options: StoreOptions = StoreOptions()
    root: str | None = None
    prefix_start: int | None = None
    budget_gb: float | None = None  # the most a node store may hold (--node-disk-gb); the free disk bounds it too

    def load(self, splits: tuple[str, ...], pretrained: str | None = None, device: str = "auto") -> TrainData:
        """The named splits mapped from this node's store; with ``pretrained`` given, and the cache asked for, with
        the prefix cache of that checkpoint too (a trial adds it with ``cached``, from the model it trains)."""
        data = node_data(self.uri, self.options, splits, self.root)
        return data if pretrained is None else self.cached(data, pretrained, device)

    def cached(self, data: TrainData, model: GenreClassifier | str, device: str = "auto") -> TrainData:
        """``data`` with the prefix cache of ``model`` (or of a pretrained name) when this source asks for one."""
        if self.prefix_start is None:
            return data
        return node_prefix(data, model, self.prefix_start, device, self.root, self.budget_gb)


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
