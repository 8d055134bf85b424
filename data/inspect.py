"""``genre-sweep inspect``: check that a prepared dataset is complete and say what it holds."""

from __future__ import annotations

import dataclasses
import logging
import sys

import pyarrow.parquet as pq

from data.config import parse
from data.jobs import run_job
from data.shards import open_dataset
from data.sources import SPLITS
from data.store import StoreError, StoreOptions, filesystem, join

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class InspectConfig:
    shards: str = dataclasses.field(metadata={"help": "a dataset written by `genre-sweep prepare` (folder or s3://)"})
    s3_endpoint: str | None = dataclasses.field(default=None, metadata={"help": "endpoint of an S3-compatible store"})
    s3_region: str | None = dataclasses.field(default=None, metadata={"help": "S3 region"})


def describe(uri: str, options: StoreOptions) -> str:
    """A readable account of a dataset; reads every shard's footer, so a missing shard is reported."""
    ds = open_dataset(uri, options)
    m = ds.manifest
    fs, root = filesystem(uri, options)
    schema = pq.read_schema(join(root, m["shards"][0]["path"]), filesystem=fs) if m["shards"] else None
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
            n = pq.read_metadata(join(root, s["path"]), filesystem=fs).num_rows
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


def main(argv: list[str] | None = None) -> int:
    cfg = parse(InspectConfig, argv, prog="genre-sweep inspect", description=__doc__.split(":", 1)[1].strip())
    return run_job(lambda: print(describe(cfg.shards, StoreOptions(cfg.s3_endpoint, cfg.s3_region))))


if __name__ == "__main__":
    sys.exit(main())
