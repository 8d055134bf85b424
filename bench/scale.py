"""Does the sweep's driver grow with the corpus? Shards at 1x, 4x and 16x a base size, a one-trial sweep on each.

The shards hold random features of AST's shape, written through the real shard writer and published
like ``prepare``'s (no audio work). For each size, in one run on one machine, it prints:

- the sweep driver's peak RSS (its own process, polled every 20 ms; Ray's processes are not the driver);
- the node store's size and build time (``model.node_store``: the dataset materialised once per node),
  and the same for the prefix cache the trial built there (``--pretrained``, tiny by default);
- the trial's time to its first optimizer step (``first_step_s``, from the trial's start).

Then it projects the node store and the cache to GTZAN and FMA-large under AST-base at 1,024 frames: sizes
from the shapes, the dataset's build time at the rate measured here.

Target (issue 13): the driver's peak RSS grows by at most 32 MB from 1x to 16x.

    python bench/scale.py                      # base 48 windows of 1024 x 128 (12 MB of features)
    python bench/scale.py --base 480 --sizes 1,4,16
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

from genre_sweep.data.configs import SPLITS
from genre_sweep.data.publish import open_destination
from genre_sweep.data.shards import FORMAT_VERSION, manifest_bytes, results_table, shard_table, write_shard
from genre_sweep.data.tracks import TrackResult
from genre_sweep.store import StoreOptions, join

GENRES = ("blues", "classical", "jazz", "metal")
SPACE = """
space:
  learning_rate: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}
  batch_size: null
  num_train_epochs: null
fixed:
  num_train_epochs: 1
  batch_size: 8
  gradient_accumulation_steps: 1
"""


def write_dataset(out: Path, windows: int, frames: int, mel_bins: int, seed: int = 0) -> int:
    """``windows`` random windows (half train, a quarter each val and test), 64 per shard; returns bytes of features."""
    rng = np.random.default_rng(seed)
    dest = open_destination(str(out), StoreOptions(), overwrite=True)
    split_of = {"train": windows // 2, "val": windows // 4, "test": windows - windows // 2 - windows // 4}
    shards, index = [], 0
    for split in SPLITS:
        for first in range(0, split_of[split], 64):
            results = []
            for i in range(first, min(first + 64, split_of[split])):
                genre = GENRES[i % len(GENRES)]
                track = {
                    "track_id": f"{split}-{i}",
                    "source": f"synthetic/{split}-{i}",
                    "label": genre,
                    "label_index": GENRES.index(genre),
                    "split": split,
                    "track_index": index,
                }
                index += 1
                columns = {
                    "features": rng.standard_normal((1, frames, mel_bins), np.float32).astype(np.float16),
                    "variant": ["original"],
                    "effect_params": ["{}"],
                    "window": [0],
                    "n_windows": [1],
                    "window_start_s": [0.0],
                }
                results.append(TrackResult(track, sha256=f"{index:064x}", columns=columns, seconds=frames / 100))
            rows = results_table(results, frames, mel_bins)
            path = f"{split}/part-{first:05d}.parquet"
            write_shard(dest.fs, join(dest.root, dest.version, path), shard_table(rows, frames, mel_bins))
            counts = {g: sum(1 for r in results if r.track["label"] == g) for g in GENRES}
            shards.append({"path": path, "split": split, "rows": len(results), "genres": counts})
    manifest = {
        "format_version": FORMAT_VERSION,
        "version_dir": dest.version,
        "config": {"bench": "scale", "windows": windows, "seed": seed},
        "genres": list(GENRES),
        "features": {"frames": frames, "mel_bins": mel_bins},
        "sources": {"fingerprint": f"bench-scale-{windows}-{seed}"},
        "shards": shards,
        "summary": {"rows_out": split_of},
    }
    dest.publish(manifest_bytes(manifest))
    return windows * frames * mel_bins * 2


def peak_rss_of(command: list[str], log: Path) -> tuple[int, float]:
    """Run ``command``; (its own peak RSS in bytes, wall seconds). Fails loudly if it fails."""
    began = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        me, peak = psutil.Process(proc.pid), 0
        while proc.poll() is None:
            try:
                peak = max(peak, me.memory_info().rss)
            except psutil.NoSuchProcess:
                break
            time.sleep(0.02)
    if proc.returncode != 0:
        sys.exit(f"bench: {' '.join(command[:4])} failed ({proc.returncode}); see {log}")
    return peak, time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=int, default=48, help="windows at 1x")
    parser.add_argument("--sizes", default="1,4,16", help="multiples of --base")
    parser.add_argument("--frames", type=int, default=1024)
    parser.add_argument("--mel-bins", type=int, default=128)
    parser.add_argument("--pretrained", default="tiny", help="the model whose prefix cache the trial builds")
    parser.add_argument("--work", default=None, help="folder for shards, stores and sweeps (default: a temp folder)")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    (work / "space.yaml").write_text(SPACE)
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        windows = args.base * size
        shards, store = work / f"shards-{size}x", work / f"store-{size}x"
        feature_bytes = write_dataset(shards, windows, args.frames, args.mel_bins)
        command = [
            sys.executable,
            "-m",
            "genre_sweep.tune.sweep",
            "--shards",
            str(shards),
            "--storage",
            str(work / "sweeps"),
            "--name",
            f"scale-{size}x",
            "--space",
            str(work / "space.yaml"),
            "--trials",
            "1",
            "--no-retrain",
            "--device",
            "cpu",
            "--node-store",
            str(store),
            "--pretrained",
            args.pretrained,
        ]
        peak, wall = peak_rss_of(command, work / f"sweep-{size}x.log")
        builds = [json.loads(line) for line in (store / "builds.jsonl").read_text().splitlines()]
        data = [b for b in builds if b["what"].startswith("dataset-")]
        cache = [b for b in builds if b["what"].startswith("prefix-")]
        store_bytes, store_s = sum(b["bytes"] for b in data), sum(b["seconds"] for b in data)
        cache_bytes, cache_s = sum(b["bytes"] for b in cache), sum(b["seconds"] for b in cache)
        result = next((work / "sweeps" / f"scale-{size}x").glob("*/result.json")).read_text().splitlines()[0]
        first_step = json.loads(result)["first_step_s"]
        rows.append((size, windows, feature_bytes, peak, store_bytes, store_s, first_step, wall))
        print(
            f"{size:>3}x: {windows:>6} windows, {feature_bytes / 1e6:8.1f} MB of features | driver peak RSS "
            f"{peak / 1e6:7.1f} MB | node store {store_bytes / 1e6:8.1f} MB built in {store_s:.2f} s | "
            f"{args.pretrained} prefix cache {cache_bytes / 1e6:.1f} MB built in {cache_s:.2f} s | "
            f"first optimizer step {first_step:.2f} s after trial start | sweep {wall:.1f} s",
            flush=True,
        )
    growth = (rows[-1][3] - rows[0][3]) / 1e6
    print(
        f"driver peak RSS from {rows[0][0]}x to {rows[-1][0]}x: {growth:+.1f} MB for "
        f"{(rows[-1][2] - rows[0][2]) / 1e6:+.1f} MB more features (target: at most +32 MB) -> "
        f"{'met' if growth <= 32 else 'NOT met'}"
    )
    project(rows[-1][4] / rows[-1][5])


# (windows in the store, windows cached by trials: train + val), from the method's splits and augmentation
# (docs/method.md)
CORPORA = {
    # 800 training tracks x 3 windows x (1 + 6 augmented copies), 100 + 100 val/test tracks x 3 windows
    "GTZAN": (800 * 3 * 7 + 200 * 3, 800 * 3 * 7 + 100 * 3),
    # 106,574 tracks of 30 s x 3 windows, no augmentation; 80 % train, 10 % val
    "FMA-large": (106_574 * 3, int(106_574 * 3 * 0.9)),
}


def project(rate: float) -> None:
    """Each corpus's node store and prefix cache under AST-base (1,024 x 128), from the shapes alone."""
    from transformers import ASTConfig

    from genre_sweep.model.dora_ast import sequence_length
    from genre_sweep.model.node_store import dataset_bytes, human

    base = ASTConfig()  # AST-base: 1,024 frames x 128 mel bins, hidden 768
    per_window = sequence_length(base) * base.hidden_size * 2
    print(f"projection, AST-base at 1,024 x 128 ({per_window / 1e6:.2f} MB of bf16 states per window):")
    for name, (stored, cached) in CORPORA.items():
        data = dataset_bytes(stored, base.max_length, base.num_mel_bins)
        print(
            f"  {name}: {stored:,} windows; per node: dataset {human(data)} (about {data / rate / 60:.0f} min "
            f"at the {rate / 1e6:.0f} MB/s measured above), prefix cache of train + val {human(cached * per_window)}"
        )


if __name__ == "__main__":
    main()
