"""``genre-sweep inspect``: check that a prepared dataset is complete and say what it holds."""

from __future__ import annotations

import logging
import sys

from genre_sweep.cli import job_main
from genre_sweep.data.configs import SPLITS, InspectConfig
from genre_sweep.data.shards import open_dataset
from genre_sweep.store import StoreOptions

log = logging.getLogger(__name__)


def describe(uri: str, options: StoreOptions) -> str:
    """A readable account of a dataset; reads and checks every shard's footer (``Dataset.shard_metadata``), so a
    missing, truncated or foreign shard is one line naming it."""
    ds = open_dataset(uri, options)
    m = ds.manifest
    schema = ds.shard_metadata(m["shards"][0]).schema.to_arrow_schema() if m["shards"] else None
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
            rows += ds.shard_metadata(s).num_rows
        tracks = sum(c["tracks"] for c in m["splits"][split].values())
        lines.append(f"{split:>5}: {tracks} tracks, {rows} rows in {len(shards)} shards")
    lines.append(f"genres: {', '.join(m['genres'])}")
    lines.append(f"augmentations (train only): {', '.join(m['config'].get('effects') or []) or 'none'}")
    lines.append(f"rejected inputs: {len(m['rejected'])}" + (" (listed in manifest.json)" if m["rejected"] else ""))
    if schema is not None:
        lines.append("columns: " + ", ".join(f"{n} {t}" for n, t in zip(schema.names, schema.types, strict=True)))
    return "\n".join(lines)


def run(cfg: InspectConfig) -> None:
    print(describe(cfg.shards, cfg.options))


main = job_main("inspect")


if __name__ == "__main__":
    sys.exit(main())
