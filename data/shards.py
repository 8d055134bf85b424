"""The on-store dataset format: Parquet shards per split plus a ``manifest.json`` written last (``data.publish``).

A dataset is complete only when its manifest exists and every shard it lists is present with the
listed row count; ``open_dataset`` refuses anything else, and a manifest that is not ours
(``data.manifest``). The manifest records each shard's sha256 as written; ``read_shard`` checks it
before it parses a byte, so a damaged shard is one line naming it, never features that silently
differ. Manifests written before the checksums load, with a logged note that their shards are read
unverified.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from genre_sweep.data.manifest import DatasetError, manifest_problem
from genre_sweep.data.tracks import TrackResult
from genre_sweep.errors import one_line
from genre_sweep.store import StoreError, StoreOptions, filesystem, join

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"

# Columns of one row (one window of one variant of one track), in shard order.
TRACK_COLUMNS = {
    "label": pa.int16(),
    "genre": pa.string(),
    "track_id": pa.string(),
    "track_index": pa.int32(),
    "source": pa.string(),
    "split": pa.string(),
    "duration_s": pa.float32(),
    "source_sha256": pa.string(),
}
ROW_COLUMNS = {
    "variant": pa.string(),
    "effect_params": pa.string(),
    "window": pa.int16(),
    "n_windows": pa.int16(),
    "window_start_s": pa.float32(),
}


def results_table(results: list[TrackResult], frames: int, mel_bins: int) -> pa.Table:
    """Rows of several tracks as one Arrow table; a rejected track is one row with null features.

    ``features`` is a plain fixed-size list of float16 here (what Ray Data moves between tasks);
    ``shard_table`` turns it into the tensor type written to Parquet.
    """
    size = frames * mel_bins
    cols: dict[str, list] = {k: [] for k in [*TRACK_COLUMNS, *ROW_COLUMNS, "reject_reason"]}
    feats, mask = [], []
    for r in results:
        n = max(r.n_rows, 1)
        t = r.track
        for k, v in (
            ("label", t["label_index"]),
            ("genre", t["label"]),
            ("track_id", t["track_id"]),
            ("track_index", t["track_index"]),
            ("source", t["source"]),
            ("split", t["split"]),
            ("duration_s", r.seconds),
            ("source_sha256", r.sha256),
            ("reject_reason", r.reject_reason),
        ):
            cols[k].extend([v] * n)
        if r.columns is None:
            for k in ROW_COLUMNS:
                cols[k].append(None)
            feats.append(np.zeros((1, size), np.float16))
            mask.append(True)
        else:
            for k in ROW_COLUMNS:
                cols[k].extend(r.columns[k])
            feats.append(r.columns["features"].reshape(len(r.columns["window"]), size))
            mask.extend([False] * r.n_rows)
    values = pa.array(np.concatenate(feats).reshape(-1)) if feats else pa.array([], pa.float16())
    features = pa.FixedSizeListArray.from_arrays(values, size, mask=pa.array(mask, pa.bool_()))
    arrays = {k: pa.array(v, TRACK_COLUMNS.get(k) or ROW_COLUMNS.get(k) or pa.string()) for k, v in cols.items()}
    return pa.table({"features": features, **arrays})


def tensor_type(frames: int, mel_bins: int) -> pa.DataType:
    return pa.fixed_shape_tensor(pa.float16(), [frames, mel_bins])


def shard_table(rows: pa.Table, frames: int, mel_bins: int) -> pa.Table:
    """Accepted rows as written to a shard: features as a (frames, mel) float16 tensor column."""
    storage = rows.column("features").combine_chunks()
    tensors = pa.ExtensionArray.from_storage(tensor_type(frames, mel_bins), storage)
    table = rows.drop_columns(["reject_reason"]).set_column(0, "features", tensors)
    return table.replace_schema_metadata({"genre_sweep_format": str(FORMAT_VERSION)})


def write_shard(fs: pa.fs.FileSystem, path: str, table: pa.Table) -> str:
    """Write ``table`` as one Parquet file (encoded in memory, then one write: one PUT on S3); its sha256."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    data = sink.getvalue()
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(data)
    return hashlib.sha256(data).hexdigest()


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    return json.dumps(manifest, indent=2, sort_keys=True).encode()


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A finished dataset on a store: its manifest and how to read its splits."""

    uri: str
    manifest: dict[str, Any]
    options: StoreOptions = StoreOptions()

    @property
    def genres(self) -> list[str]:
        return self.manifest["genres"]

    @property
    def frames(self) -> int:
        return self.manifest["features"]["frames"]

    @property
    def mel_bins(self) -> int:
        return self.manifest["features"]["mel_bins"]

    def shards(self, split: str) -> list[dict[str, Any]]:
        return [s for s in self.manifest["shards"] if s["split"] == split]

    def rows(self, split: str) -> int:
        """Rows (windows) of ``split``, from its shards' listing."""
        return sum(s["rows"] for s in self.shards(split))

    def shard_path(self, root: str, shard: dict[str, Any]) -> str:
        """A shard's path under the dataset's ``root``: inside the version folder the manifest publishes
        (``data.publish``), or at the root for datasets written before version folders."""
        return join(root, self.manifest.get("version_dir", ""), shard["path"])

    def _shard_bytes(self, shard: dict[str, Any]) -> pa.Buffer:
        """A listed shard's bytes, checked against the sha256 the manifest recorded (when it recorded one)."""
        fs, root = filesystem(self.uri, self.options)
        try:
            with fs.open_input_file(self.shard_path(root, shard)) as f:
                data = f.read_buffer()
        except FileNotFoundError as e:
            raise DatasetError(f"dataset {self.uri}: shard {shard['path']} is missing: {one_line(e)}") from e
        except OSError as e:  # the store, not the data: a trial retries it
            raise StoreError(f"dataset {self.uri}: cannot read shard {shard['path']}: {one_line(e)}") from e
        if "sha256" in shard:
            found = hashlib.sha256(data).hexdigest()
            if found != shard["sha256"]:
                raise DatasetError(
                    f"dataset {self.uri}: shard {shard['path']} is damaged: its sha256 is {found[:16]}..., the "
                    f"manifest recorded {shard['sha256'][:16]}... (prepare the dataset again)"
                )
        return data

    def _check_rows(self, shard: dict[str, Any], rows: int) -> None:
        if rows != shard["rows"]:
            raise DatasetError(
                f"dataset {self.uri}: shard {shard['path']} has {rows} rows, the manifest says {shard['rows']}"
            )

    def read_shard(self, shard: dict[str, Any], columns: list[str] | None = None) -> pa.Table:
        """One listed shard, read whole and checked (its sha256 when recorded, its columns, its row count) before
        ``columns`` are decoded; raises DatasetError naming the shard."""
        data = self._shard_bytes(shard)
        try:
            table = pq.read_table(pa.BufferReader(data), columns=columns)
        except (OSError, pa.ArrowException) as e:
            raise DatasetError(
                f"dataset {self.uri}: shard {shard['path']} is not a readable genre-sweep shard: {one_line(e)}"
            ) from e
        self._check_rows(shard, table.num_rows)
        return table

    def shard_metadata(self, shard: dict[str, Any]) -> pq.FileMetaData:
        """A listed shard's Parquet footer (its end only, no data), checked: a Parquet file with our columns and the
        listed row count. A damaged data page passes; ``read_shard`` finds it by the checksum."""
        fs, root = filesystem(self.uri, self.options)
        try:
            meta = pq.read_metadata(self.shard_path(root, shard), filesystem=fs)
        except (OSError, pa.ArrowException) as e:
            raise DatasetError(
                f"dataset {self.uri}: shard {shard['path']} is not a readable Parquet file: {one_line(e)}"
            ) from e
        names = meta.schema.to_arrow_schema().names
        lacking = [c for c in ("features", *TRACK_COLUMNS, *ROW_COLUMNS) if c not in names]
        if lacking:
            raise DatasetError(
                f"dataset {self.uri}: shard {shard['path']} is not a genre-sweep shard: it lacks the column(s) "
                + ", ".join(lacking)
            )
        self._check_rows(shard, meta.num_rows)
        return meta

    def read_split(self, split: str, columns: list[str] | None = None) -> pa.Table:
        """Every row of ``split``, shards in manifest order (see ``read_shard``)."""
        tables = [self.read_shard(shard, columns) for shard in self.shards(split)]
        if not tables:
            return pa.table({})
        return pa.concat_tables(tables)


def features_array(table: pa.Table) -> np.ndarray:
    """The features column as one (N, frames, mel) float16 array (zero-copy where possible)."""
    return table.column("features").combine_chunks().to_numpy_ndarray()


_UNVERIFIED_NOTED: set[str] = set()  # datasets whose missing checksums were already logged by this process


def open_dataset(uri: str, options: StoreOptions = StoreOptions()) -> Dataset:
    """Open a prepared dataset; refuses one without a manifest (an unfinished or foreign folder), and a manifest
    that is not ours (``data.manifest``: DatasetError naming it and what is wrong)."""
    fs, root = filesystem(uri, options)
    path = join(root, MANIFEST)
    try:
        with fs.open_input_stream(path) as f:
            manifest = json.loads(f.read())
    except FileNotFoundError as e:
        raise StoreError(
            f"{uri} has no {MANIFEST}: not a finished genre-sweep dataset "
            "(run `genre-sweep prepare`, or it stopped before finishing)"
        ) from e
    except OSError as e:
        raise StoreError(f"cannot read {uri}/{MANIFEST}: {one_line(e)}") from e
    except (ValueError, RecursionError) as e:  # not JSON, not UTF-8, nested too deep
        raise DatasetError(f"{uri}/{MANIFEST} is not JSON: {one_line(e)}") from e
    if isinstance(manifest, dict) and "format_version" in manifest and manifest["format_version"] != FORMAT_VERSION:
        raise DatasetError(f"{uri}: dataset format {manifest['format_version']!r} != supported {FORMAT_VERSION}")
    problem = manifest_problem(manifest)
    if problem:
        raise DatasetError(f"{uri}/{MANIFEST} is not a genre-sweep manifest: {problem}")
    if any("sha256" not in s for s in manifest["shards"]) and uri not in _UNVERIFIED_NOTED:
        _UNVERIFIED_NOTED.add(uri)
        log.warning("dataset %s: its manifest predates shard checksums; its shards cannot be verified", uri)
    return Dataset(uri, manifest, options)
