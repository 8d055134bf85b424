"""``genre-sweep predict``: song-level genres from an exported model.

K windows per song, evenly spaced from its start to its end, argmax per window, majority vote (a tie goes to
the higher mean probability); confidence = mean probability of the winning genre over the windows that voted
for it. The windows and the vote are the exported folder's pipeline's (``model.hf_pipeline``), so
``pipeline("audio-classification", model=folder, trust_remote_code=True)`` names the same genre. The model is
in eval mode; songs shorter than a window are padded; unreadable files are reported and skipped. Many songs go
through Ray Data in batches, one model per actor.
"""

from __future__ import annotations

import csv
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genre_sweep.cli import job_main
from genre_sweep.data.audio import AUDIO_EXTENSIONS, AudioError, load_clip
from genre_sweep.data.features import SAMPLE_RATE, fbank, windows
from genre_sweep.data.sources import walk_local
from genre_sweep.errors import one_line
from genre_sweep.model.configs import PredictConfig
from genre_sweep.model.device import autocast, resolve_device
from genre_sweep.model.export import load_exported
from genre_sweep.model.hf_pipeline import song_starts, vote
from genre_sweep.ray_start import init_ray
from genre_sweep.store import StoreError, StoreOptions, filesystem, is_s3, list_files, read_bytes

log = logging.getLogger(__name__)
MIN_SECONDS = 0.1  # anything shorter holds no music worth a vote


def list_songs(inputs: str, options: StoreOptions) -> tuple[list[str], list[dict[str, Any]]]:
    """Audio files under ``inputs`` (or the file itself), and the other files, reported as skipped."""
    fs, path = filesystem(inputs, options)
    try:
        info = fs.get_file_info(path)
        if info.type.name == "NotFound":
            raise StoreError(f"{inputs} does not exist")
        prefix = "s3://" if is_s3(inputs) else ""
        refused: list[tuple[str, str]] = []
        if info.type.name == "File":
            files = [prefix + path]
        elif is_s3(inputs):
            files = [prefix + i.path for i in list_files(fs, path)]
        else:  # a local folder: walked once, links into loops and dangling links listed, not followed
            files, refused = walk_local(path)
    except OSError as e:  # an unreachable endpoint, a missing bucket, refused credentials
        raise StoreError(f"cannot read {inputs}: {one_line(e)}") from e
    songs = [f for f in files if f.lower().endswith(AUDIO_EXTENSIONS)]
    skipped = [skipped_row(f, "not an audio file extension") for f in files if f not in songs]
    skipped += [skipped_row(f, reason) for f, reason in refused]
    return songs, skipped


def skipped_row(source: str, reason: str) -> dict[str, Any]:
    return {"source": source, "genre": None, "confidence": None, "votes": None, "windows": 0, "error": reason}


def song_windows(data: bytes, frames: int, mel_bins: int, k: int) -> np.ndarray:
    """(K', frames, mel) normalised windows evenly spaced over the song; one padded window if the song is short."""
    fb = fbank(load_clip(data, SAMPLE_RATE, MIN_SECONDS).wave, mel_bins)
    return windows(fb, frames, song_starts(fb.shape[0], frames, k))[0]


class SongPredictor:
    """Loads the exported model once; predicts lists of songs (also a Ray Data actor: ``__call__``)."""

    def __init__(self, model_dir: str, k: int, batch_size: int, device: str, options: StoreOptions):
        self.device = resolve_device(device)
        self.model, self.info = load_exported(model_dir, self.device)
        self.k, self.batch_size, self.options = k, batch_size, options

    def predict(self, sources: list[str]) -> list[dict[str, Any]]:
        rows: list[dict[str, Any] | None] = [None] * len(sources)
        batches, owners = [], []
        f = self.info["features"]
        for i, source in enumerate(sources):
            try:
                w = song_windows(read_bytes(source, self.options), f["frames"], f["mel_bins"], self.k)
            except (OSError, AudioError, MemoryError) as e:  # one song's failure is that song's row
                rows[i] = skipped_row(source, f"unreadable: {one_line(e)}")
                continue
            batches.append(w)
            owners += [i] * len(w)
        if batches:
            probs = self._probs(np.concatenate(batches))
            owners_arr = np.array(owners)
            for i in sorted(set(owners)):
                genre, confidence, votes = vote(probs[owners_arr == i])
                rows[i] = {
                    "source": sources[i],
                    "genre": self.info["genres"][genre],
                    "confidence": confidence,
                    "votes": votes,
                    "windows": int((owners_arr == i).sum()),
                    "error": None,
                }
        return [r for r in rows if r is not None]

    @torch.no_grad()
    def _probs(self, x: np.ndarray) -> np.ndarray:
        out = []
        for i in range(0, len(x), self.batch_size):
            batch = torch.from_numpy(x[i : i + self.batch_size]).to(self.device)
            with autocast(self.device):
                out.append(torch.softmax(self.model(batch).float(), dim=1).cpu())
        return torch.cat(out).numpy()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        rows = self.predict([str(s) for s in batch["source"]])
        return {k: [r[k] for r in rows] for k in ("source", "genre", "confidence", "votes", "windows", "error")}


def predict_with_ray(songs: list[str], cfg: PredictConfig, options: StoreOptions) -> list[dict[str, Any]]:
    import ray

    init_ray(cfg.ray_address)
    gpus = 1 if resolve_device(cfg.device).type == "cuda" else 0
    actors = max(1, int(ray.available_resources().get("GPU" if gpus else "CPU", 1)))
    ds = ray.data.from_items([{"source": s} for s in songs]).map_batches(
        SongPredictor,
        fn_constructor_kwargs={
            "model_dir": str(Path(cfg.model).resolve()),
            "k": cfg.windows,
            "batch_size": cfg.batch_size,
            "device": cfg.device,
            "options": options,
        },
        batch_size=8,
        concurrency=actors,
        num_gpus=gpus,
        num_cpus=0 if gpus else 1,
    )
    return ds.take_all()


def write_results(rows: list[dict[str, Any]], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    fields = ["source", "genre", "confidence", "votes", "windows", "error"]
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=2))


def table(rows: list[dict[str, Any]]) -> str:
    width = min(60, max([len(r["source"]) for r in rows] + [4]))
    lines = [f"{'song':<{width}}  {'genre':<10} {'confidence':>10} {'votes':>7}"]
    for r in rows:
        name = r["source"] if len(r["source"]) <= width else "..." + r["source"][-width + 3 :]
        if r["error"]:
            lines.append(f"{name:<{width}}  skipped: {r['error']}")
        else:
            lines.append(
                f"{name:<{width}}  {r['genre']:<10} {r['confidence']:>10.3f} {r['votes']:>3}/{r['windows']:<3}"
            )
    return "\n".join(lines)


def run(cfg: PredictConfig) -> int:
    """Exit code 0 when at least one song was predicted; 1, with the reason on stderr, when none was."""
    songs, skipped = list_songs(cfg.inputs, cfg.options)
    if not songs:
        rows: list[dict[str, Any]] = []
    elif len(songs) >= cfg.ray_threshold:
        rows = predict_with_ray(songs, cfg, cfg.options)
    else:
        rows = SongPredictor(cfg.model, cfg.windows, cfg.batch_size, cfg.device, cfg.options).predict(songs)
    rows = sorted(rows + skipped, key=lambda r: r["source"])
    write_results(rows, Path(cfg.out))
    done = sum(r["error"] is None for r in rows)
    if rows:
        print(table(rows))
        print(
            f"{done} songs predicted, {len(rows) - done} skipped; written: {cfg.out} and "
            f"{Path(cfg.out).with_suffix('.json')}"
        )
    if done == 0:
        why = (
            f"no audio file in {cfg.inputs} (extensions: {', '.join(AUDIO_EXTENSIONS)})"
            if not songs
            else f"none of the {len(songs)} audio files in {cfg.inputs} could be read (reasons in {cfg.out})"
        )
        print(f"error: nothing predicted: {why}", file=sys.stderr)
        return 1
    return 0


main = job_main("predict")

if __name__ == "__main__":
    sys.exit(main())
