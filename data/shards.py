"""The on-store dataset format: Parquet shards per split plus a ``manifest.json`` written last (``data.publish``).

A dataset is complete only when its manifest exists and every shard it lists is present with the
listed row count; ``open_dataset`` refuses anything else.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from genre_sweep.data.tracks import TrackResult
from genre_sweep.store import StoreError, StoreOptions, filesystem, join

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


def write_shard(fs: pa.fs.FileSystem, path: str, table: pa.Table) -> None:
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as f:
        pq.write_table(table, f, compression="zstd")


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

    def read_shard(self, shard: dict[str, Any], columns: list[str] | None = None) -> pa.Table:
        """One listed shard; fails if it is missing or has another row count than the manifest says."""
        fs, root = filesystem(self.uri, self.options)
        try:
            table = pq.read_table(self.shard_path(root, shard), filesystem=fs, columns=columns)
        except (OSError, pa.ArrowInvalid) as e:
            raise StoreError(f"dataset {self.uri}: shard {shard['path']} is unreadable: {e}") from e
        if table.num_rows != shard["rows"]:
            raise StoreError(
                f"dataset {self.uri}: shard {shard['path']} has {table.num_rows} rows, manifest says {shard['rows']}"
            )
        return table

    def read_split(self, split: str, columns: list[str] | None = None) -> pa.Table:
        """Every row of ``split``, shards in manifest order (see ``read_shard``)."""
        tables = [self.read_shard(shard, columns) for shard in self.shards(split)]
        if not tables:
            return pa.table({})
        return pa.concat_tables(tables)


def features_array(table: pa.Table) -> np.ndarray:
    """The features column as one (N, frames, mel) float16 array (zero-copy where possible)."""
    return table.column("features").combine_chunks().to_numpy_ndarray()


def open_dataset(uri: str, options: StoreOptions = StoreOptions()) -> Dataset:
    """Open a prepared dataset; refuses one without a manifest (an unfinished or foreign folder)."""
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
    except (OSError, json.JSONDecodeError) as e:
        raise StoreError(f"cannot read {uri}/{MANIFEST}: {e}") from e
    if manifest.get("format_version") != FORMAT_VERSION:
        raise StoreError(f"{uri}: dataset format {manifest.get('format_version')} != supported {FORMAT_VERSION}")
    return Dataset(uri, manifest, options)
