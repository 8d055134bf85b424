"""``genre-sweep prepare``: an audio collection -> augmented AST features as Parquet shards (Ray Data)."""

from __future__ import annotations

import dataclasses
import logging
import sys

from data.augment import EFFECTS
from data.config import check, parse
from data.jobs import run_job
from data.sources import GTZAN_GENRES
from data.store import StoreOptions
from data.tracks import TrackSettings

log = logging.getLogger(__name__)


def _help(text: str, **extra) -> dict:
    return {"help": text, **extra}


@dataclasses.dataclass(frozen=True)
class PrepareConfig:
    source: str = dataclasses.field(
        metadata=_help(
            "GTZAN-style folder (<root>/<genre>/<file>) or a path,label manifest (.csv/.parquet); local or s3://"
        )
    )
    out: str = dataclasses.field(metadata=_help("destination folder or s3://bucket/prefix for shards + manifest.json"))
    genres: tuple[str, ...] = dataclasses.field(default=GTZAN_GENRES, metadata=_help("the labels, comma-separated"))
    split: tuple[float, ...] = dataclasses.field(default=(0.8, 0.1, 0.1), metadata=_help("train,val,test fractions"))
    seed: int = dataclasses.field(default=0, metadata=_help("seed of the split and the augmentations"))
    frames: int = dataclasses.field(default=1024, metadata=_help("fbank frames per window (10 ms each)"))
    mel_bins: int = dataclasses.field(default=128, metadata=_help("mel bins of the fbank"))
    effects: tuple[str, ...] = dataclasses.field(
        default=EFFECTS, metadata=_help("augmented copies per training track, one per effect; 'none' for none")
    )
    high_quality_stretch: bool = dataclasses.field(
        default=False, metadata=_help("Rubber Band's high-quality tempo mode (about 3x slower)")
    )
    min_seconds: float = dataclasses.field(
        default=1.0, metadata=_help("shorter inputs are rejected; longer ones shorter than a window are padded")
    )
    tracks_per_task: int = dataclasses.field(default=4, metadata=_help("tracks per Ray task (and per shard)"))
    overwrite: bool = dataclasses.field(default=False, metadata=_help("replace a non-empty destination"))
    s3_endpoint: str | None = dataclasses.field(
        default=None, metadata=_help("endpoint of an S3-compatible store, e.g. http://127.0.0.1:9000")
    )
    s3_region: str | None = dataclasses.field(default=None, metadata=_help("S3 region (else from the AWS config)"))
    ray_address: str | None = dataclasses.field(
        default=None, metadata=_help("Ray cluster address ('auto' inside a cluster); local Ray when unset")
    )

    def __post_init__(self) -> None:
        if self.effects in (("none",), ("",)):
            object.__setattr__(self, "effects", ())
        check(bool(self.source), "source must be given")
        check(bool(self.out), "out must be given")
        check(
            len(self.genres) >= 2 and len(set(self.genres)) == len(self.genres),
            f"genres must be at least two distinct names, got {self.genres}",
        )
        check(
            len(self.split) == 3
            and all(f >= 0 for f in self.split)
            and abs(sum(self.split) - 1) < 1e-6
            and self.split[0] > 0,
            f"split must be three fractions >= 0 summing to 1 with train > 0, got {self.split}",
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
            store=StoreOptions(self.s3_endpoint, self.s3_region),
        )


DESCRIPTION = (
    "Decode, split (stratified, by track), augment the training tracks and featurise audio into AST fbank "
    "windows, written as Parquet shards per split plus manifest.json, on Ray Data."
)


def main(argv: list[str] | None = None) -> int:
    cfg = parse(PrepareConfig, argv, prog="genre-sweep prepare", description=DESCRIPTION)
    from data.pipeline import PrepareError, format_summary, run_prepare

    def body() -> None:
        manifest = run_prepare(cfg)
        log.info("dataset written to %s\n%s", cfg.out, format_summary(manifest))

    return run_job(body, known=(PrepareError,))


if __name__ == "__main__":
    sys.exit(main())
