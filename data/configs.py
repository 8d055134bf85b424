"""The data jobs' configs (synth, prepare, inspect) and the vocabularies they validate against.

Light on purpose: ``genre-sweep <job> --help`` and flag parsing import this module only, never numpy's
audio stack, torch or Ray.
"""

from __future__ import annotations

import dataclasses

from genre_sweep.config import check, field
from genre_sweep.store import StoreFlags, StoreOptions

GTZAN_GENRES = ("blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock")
SPLITS = ("train", "val", "test")
# One augmented copy per effect and training track (the method's table, docs/method.md); data.augment implements them.
EFFECTS = ("fast_tempo", "slow_tempo", "highpass", "lowpass", "echo", "bundle")
AUDIO_FORMATS = ("wav", "au", "flac", "ogg", "mp3")


@dataclasses.dataclass(frozen=True)
class SynthConfig(StoreFlags):
    """Generate a seeded synthetic music corpus in GTZAN format: <genre>/<genre>.NNNNN.wav, mono 16-bit."""

    out: str = field(help="folder (or s3://bucket/prefix) to write <genre>/<genre>.NNNNN.<format> into")
    per_genre: int = field(100, "clips per genre")
    seconds: float = field(30.0, "length of each clip")
    sample_rate: int = field(22050, "sample rate of the files")
    seed: int = field(0, "seed: the same seed gives the same files")
    genres: tuple[str, ...] = field(GTZAN_GENRES, "genres to generate")
    format: str = field("wav", "file format", choices=list(AUDIO_FORMATS))
    workers: int = field(2, "processes generating in parallel")
    overwrite: bool = field(False, "replace a non-empty destination")

    def __post_init__(self) -> None:
        check(self.per_genre >= 1, f"per_genre must be >= 1, got {self.per_genre}")
        check(1.0 <= self.seconds <= 600, f"seconds must be in [1, 600], got {self.seconds}")
        check(8000 <= self.sample_rate <= 96000, f"sample_rate must be in [8000, 96000], got {self.sample_rate}")
        unknown = sorted(set(self.genres) - set(GTZAN_GENRES))  # data.synth has one style per GTZAN genre
        check(not unknown, f"genres {unknown} have no synthetic style; known: {', '.join(GTZAN_GENRES)}")
        check(self.format in AUDIO_FORMATS, f"format {self.format!r} is not supported")
        check(self.workers >= 1, f"workers must be >= 1, got {self.workers}")


@dataclasses.dataclass(frozen=True)
class TrackSettings:
    """What turning one track into rows needs: the slice of ``PrepareConfig`` that Ray ships to each task."""

    frames: int = 1024
    mel_bins: int = 128
    min_seconds: float = 1.0
    effects: tuple[str, ...] = ()
    high_quality_stretch: bool = False
    seed: int = 0
    store: StoreOptions = StoreOptions()


@dataclasses.dataclass(frozen=True)
class PrepareConfig(StoreFlags):
    """Decode, split (stratified, by track), augment the training tracks and featurise audio into AST fbank
    windows, written as Parquet shards per split plus manifest.json, on Ray Data."""

    source: str = field(
        help="GTZAN-style folder (<root>/<genre>/<file>) or a path,label manifest (.csv/.parquet); local or s3://"
    )
    out: str = field(help="destination folder or s3://bucket/prefix for shards + manifest.json")
    genres: tuple[str, ...] | None = field(
        None,
        "the labels, comma-separated: then a genre without tracks is an error and other labels are refused; unset: "
        "every label the source has (its folder names, or a manifest's label column), sorted",
    )
    split: tuple[float, ...] = field((0.8, 0.1, 0.1), "train,val,test fractions")
    seed: int = field(0, "seed of the split and the augmentations")
    frames: int = field(1024, "fbank frames per window (10 ms each)")
    mel_bins: int = field(128, "mel bins of the fbank")
    effects: tuple[str, ...] = field(EFFECTS, "augmented copies per training track, one per effect; 'none' for none")
    high_quality_stretch: bool = field(False, "Rubber Band's high-quality tempo mode (about 3x slower)")
    min_seconds: float = field(1.0, "shorter inputs are rejected; longer ones shorter than a window are padded")
    tracks_per_task: int = field(4, "tracks per Ray task (and per shard)")
    task_resource: str | None = field(
        None, "run the tasks only on nodes advertising this custom resource (cluster.yaml's CPU nodes: cpu_node)"
    )
    overwrite: bool = field(False, "replace a non-empty destination")
    ray_address: str | None = field(None, "Ray cluster address ('auto' inside a cluster); local Ray when unset")

    def __post_init__(self) -> None:
        if self.effects in (("none",), ("",)):
            object.__setattr__(self, "effects", ())
        check(bool(self.source), "source must be given")
        check(bool(self.out), "out must be given")
        check(
            self.genres is None or (len(self.genres) >= 2 and len(set(self.genres)) == len(self.genres)),
            f"genres must be at least two distinct names, got {self.genres}",
        )
        check(
            len(self.split) == 3
            and self.split[0] > 0
            and self.split[1] > 0
            and self.split[2] >= 0
            and abs(sum(self.split) - 1) < 1e-6,
            "split must be three fractions summing to 1, train and val > 0 (every epoch validates; test may be 0), "
            f"got {self.split}",
        )
        unknown = sorted(set(self.effects) - set(EFFECTS))
        check(not unknown, f"effects {unknown} are unknown; known: {', '.join(EFFECTS)}")
        check(16 <= self.frames <= 4096, f"frames must be in [16, 4096], got {self.frames}")
        check(8 <= self.mel_bins <= 256, f"mel_bins must be in [8, 256], got {self.mel_bins}")
        check(self.min_seconds >= 0.05, f"min_seconds must be >= 0.05, got {self.min_seconds}")
        check(self.tracks_per_task >= 1, f"tracks_per_task must be >= 1, got {self.tracks_per_task}")

    def track_settings(self) -> TrackSettings:
        return TrackSettings(
            frames=self.frames,
            mel_bins=self.mel_bins,
            min_seconds=self.min_seconds,
            effects=self.effects,
            high_quality_stretch=self.high_quality_stretch,
            seed=self.seed,
            store=self.options,
        )


@dataclasses.dataclass(frozen=True)
class InspectConfig(StoreFlags):
    """Check that a prepared dataset is complete (every shard present with its row count) and say what it holds."""

    shards: str = field(help="a dataset written by `genre-sweep prepare` (folder or s3://)")
