"""Training data: a prepared dataset's splits as numpy arrays, read into memory (``load_data``) or mapped from
the node's store (``model.node_store``); nothing is decoded or featurised during training."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from genre_sweep.data.shards import Dataset, features_array, open_dataset
from genre_sweep.model.device import gpu_fraction
from genre_sweep.model.dora_ast import backbone_config
from genre_sweep.model.prefetch import Ring
from genre_sweep.store import StoreError, StoreOptions

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SplitArrays:
    features: np.ndarray  # (N, frames, mel) float16
    labels: np.ndarray  # (N,) int64
    clips: np.ndarray  # (N,) int64: index of the row's clip (track x variant) in ``clip_names``
    clip_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)


@dataclasses.dataclass(frozen=True)
class TrainData:
    splits: dict[str, SplitArrays]
    genres: tuple[str, ...]
    frames: int
    mel_bins: int
    fingerprint: str  # of the dataset (manifest minus timings): part of any cache key derived from these features
    prefix: Any = None  # a model.prefix_cache.PrefixCache of these splits, once built

    def with_prefix(self, cache: Any) -> TrainData:
        """This data with its prefix cache (training and validation then start from the cached states)."""
        return dataclasses.replace(self, prefix=cache)

    def split(self, name: str) -> SplitArrays:
        if name not in self.splits or len(self.splits[name]) == 0:
            raise ValueError(f"split {name!r} is empty or not loaded (loaded: {sorted(self.splits)})")
        return self.splits[name]


def row_clips(table: pa.Table) -> list[str]:
    """Each row's clip, ``track_id#variant``: a clip is one variant of one track, and its windows' mean logits
    give the clip-level prediction."""
    tracks, variants = table.column("track_id").to_pylist(), table.column("variant").to_pylist()
    return [f"{t}#{v}" for t, v in zip(tracks, variants, strict=True)]


def clip_index(names: list[str]) -> tuple[tuple[str, ...], np.ndarray]:
    """(sorted distinct clip names, each row's index into them) for rows' ``row_clips``."""
    clip_names, clips = np.unique(np.array(names, dtype=str), return_inverse=True)
    return tuple(clip_names.tolist()), clips.astype(np.int64)


def _split_arrays(ds: Dataset, split: str) -> SplitArrays:
    table = ds.read_split(split, ["features", "label", "track_id", "variant"])
    if table.num_rows == 0:
        empty = np.zeros((0, ds.frames, ds.mel_bins), np.float16)
        return SplitArrays(empty, np.zeros(0, np.int64), np.zeros(0, np.int64), ())
    clip_names, clips = clip_index(row_clips(table))
    return SplitArrays(
        features=features_array(table),
        labels=table.column("label").to_numpy().astype(np.int64),
        clips=clips,
        clip_names=clip_names,
    )


def load_data(uri: str, options: StoreOptions = StoreOptions(), splits=("train", "val", "test")) -> TrainData:
    """Read the named splits of a prepared dataset (local or s3://) into memory."""
    ds = open_dataset(uri, options)
    loaded = {s: _split_arrays(ds, s) for s in splits}
    log.info("loaded %s from %s", ", ".join(f"{s}: {len(a)} windows" for s, a in loaded.items()), uri)
    return TrainData(loaded, tuple(ds.genres), ds.frames, ds.mel_bins, dataset_fingerprint(ds.manifest))


def check_dataset(uri: str, pretrained: str, options: StoreOptions, splits: tuple[str, ...]) -> Dataset:
    """What a job checks before it spends anything: the dataset opens (its manifest), its windows fit
    ``pretrained``, each split it needs has rows, and each of their shards is a whole Parquet file of ours (its
    footer only: a cut-off shard stops the job here, not in every trial; a damaged page is found by its checksum
    when a node maps the data). Raises StoreError or ModelError naming the problem."""
    ds = open_dataset(uri, options)
    backbone_config(pretrained, ds.frames, ds.mel_bins)  # raises ModelError naming the mismatch
    rows = ds.manifest.get("summary", {}).get("rows_out", {})
    empty = [s for s in splits if rows.get(s, 0) == 0]
    if empty:
        raise StoreError(f"{uri} has no rows in its {', '.join(empty)} split (see its manifest's split fractions)")
    for split in splits:
        for shard in ds.shards(split):
            ds.shard_metadata(shard)
    return ds


def dataset_fingerprint(manifest: dict[str, Any]) -> str:
    """sha256 of what fixes a dataset's rows: its config, sources, features and shards (not its timings)."""
    fixed = {k: manifest[k] for k in ("config", "sources", "features", "shards", "genres") if k in manifest}
    return hashlib.sha256(json.dumps(fixed, sort_keys=True, default=str).encode()).hexdigest()


class Gather:
    """A batch's rows of each of ``sources`` (features or cached states, possibly memory-mapped, and their labels) on
    ``device``: one ``index_select`` per source and batch, no per-example Python.

    ``resident``: the sources were copied to the device once (``resident_fits`` says whether they fit), and each
    batch is gathered there with an index already on the device; nothing crosses the bus per step. Otherwise the
    rows are gathered on the host into reusable buffers; on CUDA these are pinned and copied without blocking on a
    side stream, so a batch's copy overlaps the previous step's computation (the step's stream waits for the copy,
    not the host); two sets are taken in turn, and a set is refilled only once its previous copy has finished (an
    event), so filling one never races the other's copy.

    ``prefetch`` (host path only; 0: off): the depth of a ``Ring`` of buffers that a background thread fills with the
    chunks ``plan`` names, ahead of the calls that ask for them; a call asking for anything else gathers directly.
    """

    def __init__(
        self,
        sources: tuple[torch.Tensor, ...],
        rows: int,
        device: torch.device,
        resident: bool = False,
        prefetch: int = 0,
    ):
        self.device, self.resident = device, resident
        cuda = device.type == "cuda"  # off CUDA the step computes on the cores: the ring's thread gathers on one
        self.ring = Ring(sources, rows, prefetch, cuda, None if cuda else 1) if prefetch and not resident else None
        self.sources = tuple(s.to(device) for s in sources) if resident else sources
        self.buffers = [  # none for resident sources
            tuple(torch.empty((rows, *s.shape[1:]), dtype=s.dtype, pin_memory=cuda) for s in sources)
            for _ in range(0 if resident else 2 if cuda else 1)
        ]
        self.copied: list[Any] = [None] * len(self.buffers)
        self.turn = 0
        self.copy_stream = torch.cuda.Stream(device) if cuda and not resident else None

    @property
    def index_device(self) -> torch.device:
        """Where the index given to a call must be: the device for resident sources, else the host."""
        return self.device if self.resident else torch.device("cpu")

    def plan(self, chunks: Sequence[torch.Tensor]) -> None:
        """The indices the coming calls will ask for, in order (``prefetch.epoch_chunks``): gathered ahead on a thread
        when prefetching; nothing otherwise."""
        if self.ring is not None:
            self.ring.plan(chunks)

    def __call__(self, index: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.resident:
            return tuple(torch.index_select(s, 0, index) for s in self.sources)
        if self.ring is not None and (ready := self.ring.take(index)) is not None:
            if self.copy_stream is None:
                return ready  # on the CPU: valid until the next call
            on_device, event = self._to_device(ready)
            self.ring.copied(event)  # the ring refills that buffer once the copy has finished
            return on_device
        i, self.turn = self.turn, (self.turn + 1) % len(self.buffers)
        if self.copied[i] is not None:
            self.copied[i].synchronize()
        pairs = zip(self.sources, self.buffers[i], strict=True)
        batch = tuple(torch.index_select(s, 0, index, out=b[: len(index)]) for s, b in pairs)
        if self.copy_stream is None:
            return batch  # on the CPU: valid until the next call
        on_device, self.copied[i] = self._to_device(batch)
        return on_device

    def _to_device(self, batch: tuple[torch.Tensor, ...]) -> tuple[tuple[torch.Tensor, ...], Any]:
        """``batch`` (pinned) copied to the device on the side stream, and the event of that copy."""
        compute = torch.cuda.current_stream(self.device)
        with torch.cuda.stream(self.copy_stream):
            on_device = tuple(b.to(self.device, non_blocking=True) for b in batch)
            event = torch.cuda.Event()
            event.record(self.copy_stream)
        compute.wait_event(event)  # the step's kernels start once the batch is there
        for t in on_device:
            t.record_stream(compute)  # allocated on the copy stream, used (and freed) on the step's
        return on_device, event


# A trial's share of a GPU is its fraction of the GPU's total memory (Ray's --gpus-per-trial), not a share of what is
# free when it starts: trials that start together each see an empty GPU. Its resident data may take that share less
# RESIDENT_MARGIN_BYTES, kept for the model, its activations and optimizer state and the allocator's slack (AST-base:
# about 0.4 GB of weights, and 2-3 GB of bf16 activations for a pass of 32 windows), and never more than is free now
# (less the same margin). At most RESIDENT_MAX_BYTES too: each trial copies its data to the GPU at its start, at a
# few GB/s from the page cache, and that copy counts in its start-up overhead (5 s at most is the target); bigger
# data is gathered on the host.
RESIDENT_MARGIN_BYTES = 4e9
RESIDENT_MAX_BYTES = 8e9


def resident_allowance(
    total: float, free: float, fraction: float, margin: float = RESIDENT_MARGIN_BYTES, cap: float = RESIDENT_MAX_BYTES
) -> float:
    """The bytes of data a trial may keep on its GPU: ``fraction`` (its share of the GPU) of the GPU's ``total``
    memory less ``margin``, at most ``free`` less ``margin`` and ``cap``; never below 0."""
    return max(0.0, min(fraction * total - margin, free - margin, cap))


def resident_budget(device: torch.device) -> float:
    """``resident_allowance`` for this process on ``device`` (0 off CUDA: there the data is already in memory)."""
    if device.type != "cuda":
        return 0.0
    # memory this process's allocator holds but no tensor uses (an earlier trial's, in a reused process) is free too
    free = torch.cuda.mem_get_info(device)[0] + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return resident_allowance(torch.cuda.get_device_properties(device).total_memory, free, gpu_fraction())


def resident_fits(nbytes: int, device: torch.device) -> bool:
    """Whether ``nbytes`` of training data should live on ``device`` (``resident_budget``); never on the CPU."""
    return device.type == "cuda" and 0 < nbytes <= resident_budget(device)


def resident_copy(tensors: tuple[torch.Tensor, ...], device: torch.device) -> tuple[torch.Tensor, ...] | None:
    """``tensors`` copied to ``device``, or None (one warning line) when the GPU runs out of memory doing it: the
    caller then gathers them on the host. Another error, or one off CUDA, is raised."""
    try:
        return tuple(t.to(device) for t in tensors)
    except torch.OutOfMemoryError:
        if device.type != "cuda":
            raise
    torch.cuda.empty_cache()  # the part already copied went with the exception
    log.warning(
        "out of GPU memory copying %.2f GB of data to %s: gathered on the host instead",
        sum(t.nbytes for t in tensors) / 1e9,
        device,
    )
    return None


def as_tensor(a: np.ndarray) -> torch.Tensor:
    """A tensor view of a (possibly read-only, object-store backed) array; the project never writes to it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(a)
