"""Turn one source track into its shard rows: read, decode, augment (training tracks), featurise, window.

``process_track`` is the unit of work that the Ray Data pipeline and the single-process benchmark
loop both run; it never raises for a bad input, it returns the rejection instead.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from typing import Any

import numpy as np

from genre_sweep.data.audio import AudioError, load_clip
from genre_sweep.data.augment import augment
from genre_sweep.data.configs import TrackSettings
from genre_sweep.data.features import FRAME_SHIFT, SAMPLE_RATE, clip_windows
from genre_sweep.errors import one_line
from genre_sweep.seeds import stable_seed
from genre_sweep.store import read_bytes

log = logging.getLogger(__name__)

# The start of the reason a track is rejected for when its file could not be read (a rerun reads it again).
UNREADABLE = "cannot read: "


@dataclasses.dataclass
class TrackResult:
    """A track's rows (column -> values, features stacked (R, frames, mel) float16) or its rejection."""

    track: dict[str, Any]
    sha256: str | None
    columns: dict[str, Any] | None = None
    reject_reason: str | None = None
    seconds: float = 0.0  # source audio seconds processed, for throughput figures

    @property
    def n_rows(self) -> int:
        return 0 if self.columns is None else len(self.columns["window"])


def process_track(track: dict[str, Any], settings: TrackSettings) -> TrackResult:
    """``track`` has track_id, source, label, label_index, split, track_index and the sha256 hashed at discovery
    (``data.sources``; empty: not hashed)."""
    try:
        data = read_bytes(track["source"], settings.store)
    except OSError as e:
        return TrackResult(track, None, reject_reason=f"{UNREADABLE}{one_line(e)}")
    except Exception as e:  # a MemoryError, for a file larger than this task's memory: its rejection, not the run's end
        return TrackResult(track, None, reject_reason=f"{UNREADABLE}{type(e).__name__}: {one_line(e)}")
    sha = hashlib.sha256(data).hexdigest()
    if track.get("sha256") and sha != track["sha256"]:
        why = f"changed while preparing: sha256 {sha[:12]}..., listed with {track['sha256'][:12]}..."
        return TrackResult(track, sha, reject_reason=why)
    try:
        clip = load_clip(data, SAMPLE_RATE, settings.min_seconds)  # any failure is its AudioError
    except AudioError as e:
        return TrackResult(track, sha, reject_reason=str(e))

    try:
        columns = _rows(clip.wave, track, settings)
    except Exception as e:  # one track's failure must not end the run: it is recorded as its rejection
        log.exception("track %s failed during augmentation or features", track["source"])
        return TrackResult(track, sha, reject_reason=f"processing failed: {type(e).__name__}: {e}")
    return TrackResult(track, sha, columns=columns, seconds=clip.seconds)


def _rows(wave: np.ndarray, track: dict[str, Any], settings: TrackSettings) -> dict[str, Any]:
    """Column -> values of every window of every variant (the original, then one copy per effect)."""
    variants: list[tuple[str, str, np.ndarray]] = [("original", "{}", wave)]
    if track["split"] == "train" and settings.effects:
        # Seeded by track identity, not by position, so reruns and re-orderings give the same copies.
        rng = np.random.default_rng(stable_seed(settings.seed, "augment", track["track_id"]))
        variants += augment(wave, SAMPLE_RATE, settings.effects, rng, settings.high_quality_stretch)

    feats, cols = [], {k: [] for k in ("variant", "effect_params", "window", "n_windows", "window_start_s")}
    for variant, params, audio in variants:
        w, starts = clip_windows(audio, settings.frames, settings.mel_bins)
        feats.append(w.astype(np.float16))
        for i, s in enumerate(starts):
            cols["variant"].append(variant)
            cols["effect_params"].append(params)
            cols["window"].append(i)
            cols["n_windows"].append(len(starts))
            cols["window_start_s"].append(s * FRAME_SHIFT / SAMPLE_RATE)
    cols["features"] = np.concatenate(feats)
    return cols
