"""``genre-sweep inspect``: check that a prepared dataset is complete and say what it holds."""

from __future__ import annotations

import logging
import sys

import pyarrow.parquet as pq

from genre_sweep.cli import job_main
from genre_sweep.data.configs import SPLITS, InspectConfig
from genre_sweep.data.shards import open_dataset
from genre_sweep.store import StoreError, StoreOptions, filesystem

log = logging.getLogger(__name__)


def describe(uri: str, options: StoreOptions) -> str:
    """A readable account of a dataset; reads every shard's footer, so a missing shard is reported."""
    ds = open_dataset(uri, options)
    m = ds.manifest
    fs, root = filesystem(uri, options)
    schema = pq.read_schema(ds.shard_path(root, m["shards"][0]), filesystem=fs) if m["shards"] else None
    lines = [f"dataset {uri} (format {m['format_version']}, sources fingerprint {m['sources']['fingerprint'][:12]})"]
    f = m["features"]
    lines.append(
        f"features: ({f['frames']}, {f['mel_bins']}) {f['dtype']} fbank windows per row, {f['sample_rate']} Hz, "
        f"{f['frame_shift_ms']} ms shift, normalised {f['normalisation']}"
    )
    for split in SPLITS:
        shards = ds.shards(split)
        rows = 0
        for s in shards:
            n = pq.read_metadata(ds.shard_path(root, s), filesystem=fs).num_rows
            if n != s["rows"]:
                raise StoreError(f"shard {s['path']} has {n} rows, manifest says {s['rows']}")
            rows += n
        tracks = sum(c["tracks"] for c in m["splits"][split].values())
        lines.append(f"{split:>5}: {tracks} tracks, {rows} rows in {len(shards)} shards")
    lines.append(f"genres: {', '.join(m['genres'])}")
    lines.append(f"augmentations (train only): {', '.join(m['config']['effects']) or 'none'}")
    lines.append(f"rejected inputs: {len(m['rejected'])}" + (" (listed in manifest.json)" if m["rejected"] else ""))
    if schema is not None:
        lines.append("columns: " + ", ".join(f"{n} {t}" for n, t in zip(schema.names, schema.types, strict=True)))
    return "\n".join(lines)


def run(cfg: InspectConfig) -> None:
    print(describe(cfg.shards, cfg.options))


main = job_main("inspect")


if __name__ == "__main__":
    sys.exit(main())
