"""The Ray Data pipeline of ``prepare``: tracks -> rows (decode, augment, featurise) -> Parquet shards.

The only module in ``data/`` that imports Ray. ``ShardSink`` writes each block's accepted rows as one
shard per split into this run's version folder and hands back counts and rejections, so the driver
publishes ``manifest.json`` last from what was actually written (``data.publish``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import time
from collections.abc import Iterable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import ray
from ray.data import DataContext
from ray.data.block import BlockAccessor
from ray.data.datasource import Datasink, WriteResult

from genre_sweep.data.configs import SPLITS, PrepareConfig, TrackSettings
from genre_sweep.data.features import AST_MEAN, AST_STD, FRAME_SHIFT, SAMPLE_RATE
from genre_sweep.data.publish import DONE, Destination, open_destination
from genre_sweep.data.shards import FORMAT_VERSION, manifest_bytes, results_table, shard_table, write_shard
from genre_sweep.data.sources import Rejection, discover, labels_of, work_items
from genre_sweep.data.tracks import UNREADABLE, process_track
from genre_sweep.errors import GenreSweepError, one_line, user_error
from genre_sweep.ray_start import init_ray, resource_offered
from genre_sweep.store import (
    StoreError,
    StoreOptions,
    StoreUnreachable,
    filesystem,
    join,
    storage_full,
    with_retries,
    write_bytes,
)

log = logging.getLogger(__name__)

# A store that goes away for a few seconds (a blip) costs prepare that time, not the run; after about 7 s of
# failed writes the run stops in one line (the same command then starts over; a sweep waits longer: its trials
# have more to lose).
PREPARE_RETRY_WAITS_S = (1.0, 2.0, 4.0)


class PrepareError(GenreSweepError, RuntimeError):
    """The run can't produce a usable dataset; the message says why."""


def _process_batch(batch: pa.Table, settings: TrackSettings) -> pa.Table:
    results = [process_track(t, settings) for t in batch.to_pylist()]
    return results_table(results, settings.frames, settings.mel_bins)


class ShardSink(Datasink[dict]):
    """Writes one Parquet shard per (block, split); returns what it wrote and what it refused."""

    def __init__(self, uri: str, options: StoreOptions, frames: int, mel_bins: int, effects: tuple[str, ...]):
        self.uri, self.options, self.frames, self.mel_bins = uri, options, frames, mel_bins
        self.effects = effects  # the variants a training track has besides its original (see data.tracks)
        self.result: dict[str, Any] | None = None

    def write(self, blocks: Iterable[Any], ctx: Any) -> dict:
        fs, root = filesystem(self.uri, self.options)
        out: dict[str, list] = {
            "shards": [],
            "rejected": [],
            "tracks": [],
            "nodes": [ray.get_runtime_context().get_node_id()],
        }
        for block in blocks:
            table = BlockAccessor.for_block(block).to_arrow()
            if table.num_rows == 0:
                continue
            block_out = self._write_block(fs, root, table)
            for k in ("shards", "rejected", "tracks"):
                out[k].extend(block_out[k])
        return out

    def _write_block(self, fs: pa.fs.FileSystem, root: str, table: pa.Table) -> dict[str, list]:
        """A block's shards, then its record (``done/<its tracks' hash>.json``): what a rerun of the same command
        takes instead of processing the block's tracks again."""
        out: dict[str, list] = {"shards": [], "rejected": [], "tracks": [], "covers": [], "nodes": []}
        rejected = pc.is_valid(table.column("reject_reason"))
        for r in table.filter(rejected).select(["source", "genre", "reject_reason", "track_id", "split"]).to_pylist():
            out["rejected"].append(
                dataclasses.asdict(Rejection(r["source"], r["genre"], r["reject_reason"], r["track_id"], r["split"]))
            )
        accepted = table.filter(pc.invert(rejected))
        per_track = table.select(["track_id", "source_sha256", "split", "genre", "duration_s", "reject_reason"])
        for t in {r["track_id"]: r for r in per_track.to_pylist()}.values():
            t["accepted"] = t.pop("reject_reason") is None
            out["tracks"].append(t)
        for split in SPLITS:
            rows = accepted.filter(pc.equal(accepted.column("split"), split))
            if rows.num_rows == 0:
                continue
            first = rows.slice(0, 1).to_pylist()[0]
            name = f"{split}/part-{first['track_index']:05d}-{first['variant']}-{first['window']:02d}.parquet"
            shard, written = shard_table(rows, self.frames, self.mel_bins), []
            try:  # a blip of the store is ridden out; a lasting outage is one line naming it
                with_retries(
                    lambda: written.append(write_shard(fs, join(root, name), shard)),  # noqa: B023 (called here)
                    f"write shard {name} to {self.uri}",
                    waits=PREPARE_RETRY_WAITS_S,
                )
            except OSError as e:
                raise _write_error(e)(f"cannot write shard {name} to {self.uri}: {one_line(e)}") from e
            sha256 = written[0]
            genres, rows_per_genre = _value_counts(rows.column("genre"))
            out["shards"].append(
                {
                    "path": name,
                    "split": split,
                    "rows": rows.num_rows,
                    "genres": dict(zip(genres, rows_per_genre, strict=True)),
                    "sha256": sha256,  # of the file as written: readers check it (data.shards)
                }
            )
        # the block's tracks, if all of them are whole in it (Ray Data may cut a batch's output into blocks, and a
        # rerun must not take up a track whose other rows are elsewhere): else the record is not reused
        out["covers"] = _whole_tracks(table, self.effects)
        out["nodes"] = [ray.get_runtime_context().get_node_id()]
        key = hashlib.sha256("\n".join(out["covers"]).encode()).hexdigest()[:16]
        record = json.dumps(out, sort_keys=True).encode()
        try:
            with_retries(
                lambda: write_bytes(fs, join(root, DONE, f"{key}.json"), record),
                f"record a block under {self.uri}",
                waits=PREPARE_RETRY_WAITS_S,
            )
        except OSError as e:
            raise _write_error(e)(f"cannot write to {self.uri}: {one_line(e)}") from e
        return out

    def on_write_complete(self, write_result: WriteResult[dict]) -> None:
        merged: dict[str, list] = {"shards": [], "rejected": [], "tracks": [], "nodes": []}
        for part in write_result.write_returns:
            for k in merged:
                merged[k].extend(part[k])
        self.result = merged


def _whole_tracks(table: pa.Table, effects: tuple[str, ...]) -> list[str]:
    """The block's track ids, sorted, when every track in it is whole there: each variant it must have (the
    original, and one per effect for a training track) with all its windows, or its one rejection row (not one
    for a file that could not be read, which a rerun must try again); else []."""
    rows = table.select(["track_id", "split", "variant", "window", "n_windows", "reject_reason"]).to_pylist()
    by_track: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_track.setdefault(r["track_id"], []).append(r)
    for track in by_track.values():
        if track[0]["reject_reason"] is not None:
            if track[0]["reject_reason"].startswith(UNREADABLE):  # perhaps the store, not the file: read it again
                return []
            continue
        expected = {"original", *(effects if track[0]["split"] == "train" else ())}
        windows: dict[str, set[int]] = {}
        for r in track:
            windows.setdefault(r["variant"], set()).add(r["window"])
        if set(windows) != expected or any(len(windows[r["variant"]]) != r["n_windows"] for r in track):
            return []
    return sorted(by_track)


def _value_counts(column: pa.ChunkedArray) -> tuple[list[str], list[int]]:
    vc = pc.value_counts(column).to_pylist()
    return [v["values"] for v in vc], [v["counts"] for v in vc]


def _counts(shards: list[dict], tracks: dict[str, dict], genres: tuple[str, ...]) -> dict:
    """split -> genre -> {tracks, rows}, from what was written."""
    counts = {s: {g: {"tracks": 0, "rows": 0} for g in genres} for s in SPLITS}
    for shard in shards:
        for genre, rows in shard["genres"].items():
            counts[shard["split"]][genre]["rows"] += rows
    for t in tracks.values():
        if t["accepted"]:
            counts[t["split"]][t["genre"]]["tracks"] += 1
    return counts


def _fingerprint(tracks: dict[str, dict], discovery_rejects: list[Rejection]) -> str:
    """sha256 over every input's identity, label and content hash (unreadable inputs by name)."""
    h = hashlib.sha256()
    for track_id, t in sorted(tracks.items()):
        h.update(f"{track_id}\x1f{t['genre']}\x1f{t['source_sha256']}\n".encode())
    for r in sorted(discovery_rejects, key=lambda r: r.source):
        h.update(f"rejected\x1f{r.source}\n".encode())
    return h.hexdigest()


def run_prepare(cfg: PrepareConfig) -> dict[str, Any]:
    """Run the whole pipeline; returns the manifest it wrote. Raises PrepareError or StoreError.

    A run that fails, or is interrupted, removes its own unpublished version folder (``Destination.discard``)."""
    start = time.perf_counter()
    dest = open_destination(cfg.out, cfg.options, cfg.overwrite)  # checked, nothing removed (see data.publish)
    try:
        return _prepare_into(dest, cfg, start)
    except BaseException as e:  # an error, Ctrl-C or SIGTERM: no unreferenced shards left behind ...
        if _unreachable(e):  # ... except when the store went away: the same command, rerun, takes them up
            log.info("prepare: the shards written so far stay in %s for the same command to reuse", dest.version_uri)
        else:
            dest.discard()
        raise
    finally:
        dest.close()


def _unreachable(error: BaseException) -> bool:
    """Whether ``error`` is a write that failed for want of the store (not a full one), here or in a task."""
    return isinstance(error, Exception) and isinstance(user_error(error), StoreUnreachable)


def _write_error(error: OSError) -> type[StoreError]:
    return StoreError if storage_full(error) else StoreUnreachable


def _prepare_into(dest: Destination, cfg: PrepareConfig, start: float) -> dict[str, Any]:
    options = cfg.options
    tracks, discovery_rejects = discover(cfg.source, cfg.genres, options)
    genres = cfg.genres or labels_of(tracks, cfg.source)  # pinned, or the source's own (folder names), sorted
    empty = [g for g in genres if not any(t.label == g for t in tracks)]
    if empty:
        raise PrepareError(f"genre(s) {empty} have no usable tracks in {cfg.source}; nothing to train them on")
    items = work_items(tracks, cfg.split, cfg.seed, genres)
    log.info("prepare: %d tracks (%d refused before decoding) -> %s", len(items), len(discovery_rejects), cfg.out)

    settings = cfg.track_settings()
    # an earlier run of the same inputs and settings that stopped part-way (a store outage, a killed process):
    # its completed blocks are taken up, their tracks not processed again
    key = hashlib.sha256(
        json.dumps(
            {"items": items, "settings": dataclasses.asdict(settings), "format": FORMAT_VERSION}, sort_keys=True
        ).encode()
    ).hexdigest()
    reused = [r for r in dest.resume_or_start(key) if r.get("covers") and _shards_there(dest, r)]
    done = {track for r in reused for track in r["covers"]}
    if done:
        log.info("prepare: reusing the shards of %d tracks an interrupted run of this command wrote", len(done))
    left = [item for item in items if item["track_id"] not in done]
    written = _process(left, dest, cfg, settings) if left else {"shards": [], "rejected": [], "tracks": [], "nodes": []}
    for record in reused:
        for k in written:
            written[k].extend(record[k])
    return _publish(dest, cfg, start, written, genres, items, tracks, discovery_rejects)


def _shards_there(dest: Destination, record: dict[str, Any]) -> bool:
    """Whether every shard a block's record lists is there, whole in size (a removal or a write may have been cut
    off since); if not, the block's tracks are processed again."""
    fs, root = filesystem(dest.version_uri, dest.options)
    try:
        for shard in record.get("shards", []):
            info = fs.get_file_info(join(root, shard["path"]))
            if info.type != pa.fs.FileType.File or not info.size:
                return False
    except OSError as e:
        raise StoreUnreachable(f"cannot read {dest.version_uri}: {one_line(e)}") from e
    return True


def _process(items: list[dict], dest: Destination, cfg: PrepareConfig, settings: TrackSettings) -> dict[str, list]:
    """Decode, augment and featurise ``items`` with Ray Data, writing their shards into ``dest``'s version."""
    init_ray(cfg.ray_address)
    if cfg.task_resource and not resource_offered(cfg.task_resource):
        raise PrepareError(
            f"--task-resource {cfg.task_resource}: no node of this cluster advertises it, so no task could run; "
            "drop the flag, or add it to a node type's resources"
        )
    DataContext.get_current().execution_options.preserve_order = True  # same shards on every run
    # A failed task's error reaches run_job (one line for ours, a traceback for a bug); Ray Data's own copy
    # of its traceback, logged as it aborts, would only bury that line.
    for noisy in ("ray.data._internal.execution.streaming_executor_state", "ray.data.exceptions"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    ds = ray.data.from_items(items, override_num_blocks=max(1, math.ceil(len(items) / cfg.tracks_per_task)))
    ds = ds.map_batches(
        _process_batch,
        batch_size=cfg.tracks_per_task,
        batch_format="pyarrow",
        fn_kwargs={"settings": settings},
        num_cpus=1,
        # only on the nodes advertising it (cluster.yaml's CPU nodes), so prepare never starts a GPU worker
        resources={cfg.task_resource: 1} if cfg.task_resource else None,
    )
    sink = ShardSink(dest.version_uri, cfg.options, cfg.frames, cfg.mel_bins, settings.effects)
    ds.write_datasink(sink)
    assert sink.result is not None
    return sink.result


def _publish(
    dest: Destination,
    cfg: PrepareConfig,
    start: float,
    written: dict[str, list],
    genres: tuple[str, ...],
    items: list[dict],
    tracks: list[Any],
    discovery_rejects: list[Rejection],
) -> dict[str, Any]:
    """The manifest of what was written (this run's blocks and those taken up from an earlier run), published."""
    rejected = [dataclasses.asdict(r) for r in discovery_rejects] + written["rejected"]

    per_track = {t["track_id"]: t for t in written["tracks"]}  # a track split over blocks appears twice
    counts = _counts(written["shards"], per_track, genres)
    no_train = [g for g in genres if counts["train"][g]["rows"] == 0]
    if no_train:
        reasons = [f"{r['source']}: {r['reason']}" for r in written["rejected"] if r["label"] in no_train][:10]
        raise PrepareError(
            f"genre(s) {no_train} ended up with no training rows, so no manifest was written to {cfg.out}; "
            "rejected inputs: " + "; ".join(reasons)
        )
    wall = time.perf_counter() - start
    audio_seconds = sum(t["duration_s"] for t in per_track.values() if t["accepted"])
    manifest = {
        "format_version": FORMAT_VERSION,
        "version_dir": dest.version,
        "config": dataclasses.asdict(cfg),
        "genres": list(genres),
        "features": {
            "frames": cfg.frames,
            "mel_bins": cfg.mel_bins,
            "sample_rate": SAMPLE_RATE,
            "frame_shift_ms": FRAME_SHIFT * 1000 // SAMPLE_RATE,
            "window_type": "hanning",
            "mean": AST_MEAN,
            "std": AST_STD,
            "normalisation": "(fbank - mean) / (2 * std)",
            "dtype": "float16",
            "shape": [cfg.frames, cfg.mel_bins],
        },
        "sources": {
            "source": cfg.source,
            "tracks": len(tracks) + len(discovery_rejects),
            "fingerprint": _fingerprint(per_track, discovery_rejects),
        },
        "splits": counts,
        "shards": sorted(written["shards"], key=lambda s: s["path"]),
        "rejected": sorted(rejected, key=lambda r: r["source"]),
        "summary": {
            "tracks_in": len(tracks) + len(discovery_rejects),
            "rows_out": {s: sum(c["rows"] for c in counts[s].values()) for s in SPLITS},
            "tracks_out": {s: sum(c["tracks"] for c in counts[s].values()) for s in SPLITS},
            "rejected": len(rejected),
            "nodes": len(set(written["nodes"])),  # the Ray nodes whose tasks wrote shards
            "wall_s": round(wall, 2),
            "tracks_per_s": round(len(items) / wall, 3),
            "source_audio_s": round(audio_seconds, 1),
            "audio_s_per_s": round(audio_seconds / wall, 2),
        },
    }
    dest.publish(manifest_bytes(manifest))
    dest.tidy({shard["path"] for shard in written["shards"]})
    return manifest


def format_summary(manifest: dict[str, Any]) -> str:
    """A closing summary table: tracks and rows per split x genre, rejections, time."""
    s = manifest["summary"]
    genres = manifest["genres"]
    width = max(len(g) for g in genres) + 2
    lines = [f"{'genre':<{width}}" + "".join(f"{sp + ' tracks/rows':>20}" for sp in SPLITS)]
    for g in genres:
        cells = [f"{manifest['splits'][sp][g]['tracks']}/{manifest['splits'][sp][g]['rows']}" for sp in SPLITS]
        lines.append(f"{g:<{width}}" + "".join(f"{c:>20}" for c in cells))
    lines.append(
        f"tracks in: {s['tracks_in']}   rows out: "
        + ", ".join(f"{k} {v}" for k, v in s["rows_out"].items())
        + f"   rejected: {s['rejected']}\nwall: {s['wall_s']:.1f} s on {s.get('nodes', 1)} node(s)   "
        f"{s['tracks_per_s']:.2f} tracks/s   "
        f"{s['audio_s_per_s']:.1f} s of source audio per s"
    )
    for r in manifest["rejected"][:20]:
        lines.append(f"  rejected {r['source']}: {r['reason']}")
    if len(manifest["rejected"]) > 20:
        lines.append(f"  ... and {len(manifest['rejected']) - 20} more (see manifest.json)")
    return "\n".join(lines)
