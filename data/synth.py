"""``genre-sweep synth``: a seeded synthetic corpus in GTZAN format (10 genres, mono 16-bit WAV).

Each genre is a style: drum patterns and swing, scale and chord progression, how chords are played,
instrument timbres, distortion and note density. Tempo ranges overlap across genres (and tempo is
what augmentation changes), so no single feature gives the label away; every clip draws its own
key, tempo, timbres, levels and pattern variations, so a model has to learn the styles.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import sys
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import soundfile as sf

from genre_sweep.cli import job_main
from genre_sweep.data.configs import SynthConfig
from genre_sweep.seeds import stable_seed
from genre_sweep.store import filesystem, join, prepare_destination, write_bytes

log = logging.getLogger(__name__)

MAJOR, MINOR = (0, 2, 4, 5, 7, 9, 11), (0, 2, 3, 5, 7, 8, 10)
BLUES, PENTA = (0, 3, 5, 6, 7, 10), (0, 2, 4, 7, 9)
DORIAN, PHRYGIAN = (0, 2, 3, 5, 7, 9, 10), (0, 1, 3, 5, 7, 8, 10)


@dataclasses.dataclass(frozen=True)
class Style:
    bpm: tuple[int, int]
    scales: tuple[tuple[int, ...], ...]
    progression: tuple[int, ...]  # chord roots in semitones above the key, one per bar
    chord: tuple[int, ...]  # chord intervals
    chord_steps: tuple[str, ...]  # 16-step patterns, one chosen per clip ("x" = hit)
    chord_len: float  # chord note length in steps
    bass_steps: str
    kick: tuple[str, ...]
    snare: tuple[str, ...]
    hat: tuple[str, ...]
    lead_density: tuple[float, float]  # notes per beat
    lead_len: float  # lead note length in steps
    timbre: tuple[float, float, float]  # harmonic roll-off, attack s, decay s of the chord/lead instrument
    drive: float  # tanh distortion of the tonal bus (1 = clean)
    swing: float = 0.0  # delay of every second 16th, as a fraction of a step
    walking_bass: bool = False


STYLES: dict[str, Style] = {
    "blues": Style(
        (64, 112),
        (BLUES,),
        (0, 0, 0, 0, 5, 5, 0, 0, 7, 5, 0, 7),
        (0, 4, 7, 10),
        ("x..x..x..x..x..x", "x.....x.x.....x."),
        2.5,
        "x..x..x..x..x..x",
        ("x.......x.......",),
        ("....x.......x...",),
        ("x..x..x..x..x..x",),
        (0.8, 2.0),
        2.0,
        (0.62, 0.01, 0.5),
        1.8,
        swing=0.3,
    ),
    "classical": Style(
        (58, 124),
        (MAJOR, MINOR),
        (0, 5, 7, 0, 9, 5, 7, 0),
        (0, 4, 7, 12),
        ("x...............", "x.......x......."),
        12.0,
        "x...............",
        ("",),
        ("",),
        ("",),
        (0.8, 2.5),
        5.0,
        (0.45, 0.12, 1.6),
        1.0,
    ),
    "country": Style(
        (88, 142),
        (PENTA, MAJOR),
        (0, 5, 7, 0),
        (0, 4, 7),
        ("..x...x...x...x.", "..x.x...x.x.x..."),
        1.2,
        "x.......x.......",
        ("x.......x.......",),
        ("....x.......x...",),
        ("x.x.x.x.x.x.x.x.",),
        (1.0, 2.5),
        1.0,
        (0.8, 0.003, 0.25),
        1.2,
    ),
    "disco": Style(
        (108, 132),
        (DORIAN, MINOR),
        (0, 0, 5, 5, 3, 3, 7, 7),
        (0, 3, 7, 10),
        ("...x..x....x..x.", ".x...x...x...x.."),
        1.0,
        "x.x.x.x.x.x.x.x.",
        ("x...x...x...x...",),
        ("....x.......x...",),
        ("..x...x...x...x.",),
        (0.6, 1.5),
        1.0,
        (0.7, 0.005, 0.3),
        1.3,
    ),
    "hiphop": Style(
        (76, 104),
        (MINOR, PENTA),
        (0, 0, 8, 7),
        (0, 3, 7, 10),
        ("x...............", "x.......x......."),
        14.0,
        "x.....x..x......",
        ("x.....x..x......", "x..x......x....."),
        ("....x.......x...",),
        ("xxxxxxxxxxxxxxxx", "x.x.x.x.x.x.x.x."),
        (0.3, 0.9),
        2.0,
        (0.5, 0.02, 0.6),
        1.0,
    ),
    "jazz": Style(
        (96, 190),
        (DORIAN, MAJOR),
        (2, 7, 0, 0),
        (0, 4, 7, 11),
        ("x.....x...x.....", "...x....x.....x."),
        2.0,
        "x...x...x...x...",
        ("x...............",),
        ("......x.......x.",),
        ("x...x.xx....x.xx",),
        (2.0, 4.0),
        1.0,
        (0.55, 0.01, 0.45),
        1.0,
        swing=0.33,
        walking_bass=True,
    ),
    "metal": Style(
        (96, 196),
        (PHRYGIAN, MINOR),
        (0, 0, 1, 0, 5, 3, 1, 0),
        (0, 7, 12),
        ("xxxxxxxxxxxxxxxx", "x.x.x.x.x.x.x.x."),
        0.9,
        "x.x.x.x.x.x.x.x.",
        ("xxxxxxxxxxxxxxxx", "x.xxx.xxx.xxx.xx"),
        ("....x.......x...",),
        ("x.x.x.x.x.x.x.x.",),
        (1.0, 3.0),
        1.0,
        (0.85, 0.002, 0.4),
        9.0,
    ),
    "pop": Style(
        (92, 132),
        (MAJOR,),
        (0, 7, 9, 5),
        (0, 4, 7),
        ("x.x.x.x.x.x.x.x.", "x..x..x.x..x..x."),
        1.8,
        "x.......x.x.....",
        ("x.......x.x.....",),
        ("....x.......x...",),
        ("x.x.x.x.x.x.x.x.",),
        (1.0, 2.0),
        1.5,
        (0.5, 0.005, 0.35),
        1.1,
    ),
    "reggae": Style(
        (64, 98),
        (MAJOR, MINOR),
        (0, 5, 0, 7),
        (0, 4, 7),
        ("..x...x...x...x.", "..x.......x....."),
        0.8,
        "x..x..x...x.x...",
        ("........x.......",),
        ("........x.......",),
        ("x.x.x.x.x.x.x.x.",),
        (0.4, 1.2),
        1.5,
        (0.6, 0.003, 0.2),
        1.0,
    ),
    "rock": Style(
        (96, 164),
        (MAJOR, MINOR, PENTA),
        (0, 5, 7, 5),
        (0, 7, 12),
        ("x.x.x.x.x.x.x.x.", "x...x...x...x..."),
        1.8,
        "x.x.x.x.x.x.x.x.",
        ("x.......x.x.....", "x...x...x...x..."),
        ("....x.......x...",),
        ("x.x.x.x.x.x.x.x.",),
        (1.0, 2.0),
        1.5,
        (0.75, 0.004, 0.5),
        3.5,
    ),
}


def _midi_hz(midi: float) -> float:
    return 440.0 * 2 ** ((midi - 69) / 12)


class _Instrument:
    """A wavetable voice: one cycle of harmonics with geometric roll-off, attack and exponential decay."""

    def __init__(self, rolloff: float, attack: float, decay: float, sr: int, rng: np.random.Generator):
        k = np.arange(1, 13)
        amps = rolloff ** (k - 1) * rng.uniform(0.6, 1.4, len(k))
        phase = np.linspace(0, 2 * np.pi, 2048, endpoint=False)
        table = (amps[:, None] * np.sin(k[:, None] * phase + rng.uniform(0, 2 * np.pi, (len(k), 1)))).sum(0)
        self.table = (table / np.abs(table).max()).astype(np.float32)
        self.attack, self.decay, self.sr = attack, decay, sr
        self._cache: dict[tuple[int, int], np.ndarray] = {}

    def note(self, midi: int, n: int) -> np.ndarray:
        key = (midi, n)
        if key not in self._cache:
            t = np.arange(n) / self.sr
            idx = (t * _midi_hz(midi) * len(self.table)).astype(np.int64) % len(self.table)
            env = np.minimum(1.0, t / max(self.attack, 1e-4)) * np.exp(-t / self.decay)
            env[-min(64, n) :] *= np.linspace(1, 0, min(64, n))  # no click at the cut
            self._cache[key] = (self.table[idx] * env).astype(np.float32)
        return self._cache[key]


def _drums(sr: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    t = np.arange(int(0.25 * sr)) / sr
    f0, f1 = rng.uniform(110, 170), rng.uniform(40, 60)
    kick = np.sin(2 * np.pi * (f1 * t + (f0 - f1) * 0.03 * (1 - np.exp(-t / 0.03)))) * np.exp(
        -t / rng.uniform(0.08, 0.16)
    )
    noise = rng.standard_normal(len(t))
    snare = (0.7 * noise + 0.5 * np.sin(2 * np.pi * rng.uniform(170, 240) * t)) * np.exp(-t / rng.uniform(0.05, 0.12))
    hat = np.diff(noise, prepend=0) * np.exp(-t / rng.uniform(0.01, 0.04))
    return {
        "kick": kick.astype(np.float32),
        "snare": (0.6 * snare).astype(np.float32),
        "hat": (0.25 * hat).astype(np.float32),
    }


def _add(buf: np.ndarray, at: int, x: np.ndarray, gain: float) -> None:
    if at < len(buf):
        end = min(len(buf), at + len(x))
        buf[at:end] += gain * x[: end - at]


def render(style: Style, seconds: float, sr: int, rng: np.random.Generator) -> np.ndarray:
    """One clip of ``style``, (N,) float32 in [-1, 1]; every random choice comes from ``rng``."""
    n = int(seconds * sr)
    bpm = rng.uniform(*style.bpm)
    step = 60.0 / bpm / 4 * sr  # samples per 16th note
    key = 48 + int(rng.integers(0, 12))
    scale = style.scales[int(rng.integers(len(style.scales)))]
    roll, att, dec = (v * rng.uniform(0.8, 1.25) for v in style.timbre)
    tonal = _Instrument(min(roll, 0.95), att, dec, sr, rng)
    lead = _Instrument(min(roll * rng.uniform(0.8, 1.1), 0.95), att, dec * rng.uniform(0.6, 1.2), sr, rng)
    bass = _Instrument(0.35, 0.005, 0.4, sr, rng)
    drums = _drums(sr, rng)
    pats = {
        name: p[int(rng.integers(len(p)))]
        for name, p in (("kick", style.kick), ("snare", style.snare), ("hat", style.hat), ("chord", style.chord_steps))
    }
    gains = {
        "kick": rng.uniform(0.6, 1.0),
        "snare": rng.uniform(0.4, 0.8),
        "hat": rng.uniform(0.3, 0.7),
        "chord": rng.uniform(0.15, 0.3),
        "bass": rng.uniform(0.3, 0.5),
        "lead": rng.uniform(0.2, 0.35),
    }
    density = rng.uniform(*style.lead_density) / 4  # chance of a lead note per 16th
    hit_keep = rng.uniform(0.85, 1.0)
    tonal_bus, drum_bus = np.zeros(n, np.float32), np.zeros(n, np.float32)
    lead_pitch = int(rng.integers(len(scale)))
    n_steps = int(n / step) + 1
    for s in range(n_steps):
        pos = s % 16
        at = int((s + (style.swing if s % 2 else 0.0)) * step)
        root = key + style.progression[(s // 16) % len(style.progression)]
        for name in ("kick", "snare", "hat"):
            if pats[name] and pats[name][pos] == "x" and rng.random() < hit_keep:
                _add(drum_bus, at, drums[name], gains[name] * rng.uniform(0.8, 1.0))
        if pats["chord"][pos] == "x":
            length = int(style.chord_len * step)
            for iv in style.chord:
                _add(tonal_bus, at, tonal.note(root + 12 + iv, length), gains["chord"])
        if style.bass_steps[pos] == "x":
            offset = (
                scale[int(rng.integers(len(scale)))] if style.walking_bass else (0 if pos < 8 else 7 * (s % 3 == 0))
            )
            _add(tonal_bus, at, bass.note(root - 12 + offset, int(2 * step)), gains["bass"])
        if rng.random() < density:
            lead_pitch = int(np.clip(lead_pitch + rng.integers(-2, 3), 0, 2 * len(scale) - 1))
            midi = key + 24 + 12 * (lead_pitch // len(scale)) + scale[lead_pitch % len(scale)]
            _add(tonal_bus, at, lead.note(midi, int(style.lead_len * step * rng.uniform(0.7, 1.3))), gains["lead"])
    drive = style.drive * rng.uniform(0.8, 1.2)
    tonal_bus = np.tanh(drive * tonal_bus) / np.tanh(drive) if drive > 1.05 else tonal_bus
    mix = tonal_bus + drum_bus + rng.uniform(0.001, 0.01) * rng.standard_normal(n).astype(np.float32)
    return (mix / np.abs(mix).max() * rng.uniform(0.5, 0.9)).astype(np.float32)


def clip_bytes(genre: str, index: int, cfg: SynthConfig) -> bytes:
    """The encoded file of clip ``index`` of ``genre``: the same bytes for the same config."""
    rng = np.random.default_rng(stable_seed(cfg.seed, "synth", genre, index))
    wave = render(STYLES[genre], cfg.seconds, cfg.sample_rate, rng)
    buf = io.BytesIO()
    subtype = {"wav": "PCM_16", "au": "PCM_16", "flac": "PCM_16", "ogg": "VORBIS", "mp3": "MPEG_LAYER_III"}[cfg.format]
    sf.write(buf, wave, cfg.sample_rate, format=cfg.format.upper() if cfg.format != "ogg" else "OGG", subtype=subtype)
    return buf.getvalue()


def _write_one(args: tuple[str, int, SynthConfig]) -> str:
    genre, index, cfg = args
    fs, root = filesystem(cfg.out, cfg.options)
    name = f"{genre}/{genre}.{index:05d}.{cfg.format}"
    write_bytes(fs, join(root, name), clip_bytes(genre, index, cfg))
    return name


def generate(cfg: SynthConfig) -> list[str]:
    """Write the corpus; returns the written file names relative to ``cfg.out``."""
    prepare_destination(cfg.out, cfg.options, cfg.overwrite)
    jobs = [(g, i, cfg) for g in cfg.genres for i in range(cfg.per_genre)]
    from tqdm import tqdm

    if cfg.workers == 1:
        names = [_write_one(j) for j in tqdm(jobs, desc="synth", unit="clip")]
    else:
        with ProcessPoolExecutor(cfg.workers) as pool:
            names = list(tqdm(pool.map(_write_one, jobs, chunksize=4), total=len(jobs), desc="synth", unit="clip"))
    return names


def run(cfg: SynthConfig) -> None:
    names = generate(cfg)
    log.info(
        "wrote %d clips (%d genres x %d, %.0f s, %d Hz %s) to %s",
        len(names),
        len(cfg.genres),
        cfg.per_genre,
        cfg.seconds,
        cfg.sample_rate,
        cfg.format,
        cfg.out,
    )


main = job_main("synth")

if __name__ == "__main__":
    sys.exit(main())
