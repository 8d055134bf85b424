"""Benchmark of ``prepare``: the Ray Data pipeline against a plain single-process loop, in one run.

Generates (or reuses) a synthetic GTZAN-sized corpus, prepares it with the real pipeline on local Ray,
then runs the same per-track work (decode, augment, featurise, write shards) in one plain Python loop
over the same files, and prints clips/s, seconds of audio per second per core, and the ratio.

    python bench/prepare.py                       # 10 x 100 clips of 30 s: the GTZAN-sized target
    python bench/prepare.py --per-genre 10        # a quick look
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import time
from pathlib import Path

import ray

from genre_sweep.config import resolve
from genre_sweep.data.configs import PrepareConfig, SynthConfig
from genre_sweep.data.pipeline import run_prepare
from genre_sweep.data.shards import results_table, shard_table, write_shard
from genre_sweep.data.sources import discover, labels_of, work_items
from genre_sweep.data.synth import generate
from genre_sweep.data.tracks import process_track
from genre_sweep.store import StoreOptions, filesystem, join

TARGET_S = 600.0  # GTZAN-sized corpus in under 10 minutes on 2 cores


def corpus(root: Path, per_genre: int, seconds: float) -> Path:
    """The benchmark corpus, generated once per (per_genre, seconds) and reused."""
    path = root / f"corpus-{per_genre}x{seconds:g}s"
    done = root / f"{path.name}.complete"  # beside the corpus: inside it, prepare would reject it as a stray file
    if not done.exists():
        generate(SynthConfig(out=str(path), per_genre=per_genre, seconds=seconds, overwrite=True))
        done.write_text("ok")
    return path


def plain_loop(cfg: PrepareConfig) -> dict:
    """The same work as the pipeline, one track after another in this process, no Ray."""
    options = StoreOptions()
    tracks, _ = discover(cfg.source, cfg.genres, options)
    items = work_items(tracks, cfg.split, cfg.seed, cfg.genres or labels_of(tracks, cfg.source))
    fs, root = filesystem(cfg.out, options)
    settings = cfg.track_settings()
    rows = variants = 0
    start = time.perf_counter()
    for first in range(0, len(items), cfg.tracks_per_task):
        batch = [process_track(item, settings) for item in items[first : first + cfg.tracks_per_task]]
        table = results_table(batch, cfg.frames, cfg.mel_bins)
        write_shard(fs, join(root, f"part-{first:05d}.parquet"), shard_table(table, cfg.frames, cfg.mel_bins))
        rows += table.num_rows
        variants += sum(len(set(r.columns["variant"])) for r in batch if r.columns)
    return {"wall_s": time.perf_counter() - start, "rows": rows, "variants": variants, "tracks": len(items)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--per-genre", type=int, default=100, help="clips per genre (100 = GTZAN size)")
    p.add_argument("--seconds", type=float, default=30.0, help="clip length")
    p.add_argument("--work-dir", default="bench-run", help="where the corpus and outputs go")
    p.add_argument("--high-quality-stretch", action="store_true", help="Rubber Band's high-quality tempo mode")
    p.add_argument("--tracks-per-task", type=int, default=None, help="tracks per Ray task (default: prepare's)")
    p.add_argument("--skip-loop", action="store_true", help="only time the pipeline")
    args = p.parse_args()

    work = Path(args.work_dir)
    work.mkdir(exist_ok=True)
    cores = os.cpu_count() or 1
    t0 = time.perf_counter()
    source = corpus(work, args.per_genre, args.seconds)
    print(
        f"corpus: {source} ({10 * args.per_genre} clips of {args.seconds:g} s), "
        f"ready in {time.perf_counter() - t0:.1f} s"
    )

    cfg = resolve(
        PrepareConfig,
        {
            "source": str(source),
            "out": str(work / "shards"),
            "overwrite": True,
            "high_quality_stretch": args.high_quality_stretch,
            **({"tracks_per_task": args.tracks_per_task} if args.tracks_per_task else {}),
        },
    )
    t0 = time.perf_counter()
    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
    ray_start = time.perf_counter() - t0
    manifest = run_prepare(cfg)
    s = manifest["summary"]
    pipeline_s = s["wall_s"]
    train = s["tracks_out"]["train"]
    variants = train * (1 + len(cfg.effects)) + s["tracks_out"]["val"] + s["tracks_out"]["test"]
    clips = sum(s["tracks_out"].values())
    audio = s["source_audio_s"]
    ray.shutdown()

    print(f"\n== Ray Data pipeline on {cores} cores (local Ray; start-up {ray_start:.1f} s not included) ==")
    print(
        f"tracks: {clips} ({train} train x {1 + len(cfg.effects)} variants) -> {variants} clip variants, "
        f"{sum(s['rows_out'].values())} rows"
    )
    print(
        f"wall: {pipeline_s:.1f} s   clips/s: {clips / pipeline_s:.2f}   clip variants/s: {variants / pipeline_s:.2f}"
    )
    print(
        f"source audio per second per core: {audio / pipeline_s / cores:.1f} s/s   "
        f"featurised audio (with copies) per second per core: {audio / clips * variants / pipeline_s / cores:.1f} s/s"
    )
    if args.per_genre >= 100 and args.seconds >= 30:
        verdict = "met" if pipeline_s + ray_start < TARGET_S else "NOT met"
        print(
            f"target: GTZAN-sized corpus in < {TARGET_S:.0f} s on this machine: {pipeline_s + ray_start:.0f} s "
            f"including Ray start-up -> {verdict}"
        )

    if args.skip_loop:
        return
    loop_out = work / "loop"
    shutil.rmtree(loop_out, ignore_errors=True)
    loop = plain_loop(dataclasses.replace(cfg, out=str(loop_out)))
    print("\n== plain single-process loop over the same files (same functions, no Ray) ==")
    print(
        f"wall: {loop['wall_s']:.1f} s   clips/s: {loop['tracks'] / loop['wall_s']:.2f}   "
        f"source audio per second: {audio / loop['wall_s']:.1f} s/s   rows: {loop['rows']}"
    )
    print(f"\nratio pipeline / plain loop (throughput): {loop['wall_s'] / pipeline_s:.2f}x on {cores} cores")


if __name__ == "__main__":
    main()
