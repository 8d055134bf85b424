"""Decode audio bytes into a validated mono waveform at AST's sample rate.

Every way a file can be unusable raises ``AudioError`` with a one-line reason, which the pipeline
records as that input's rejection (and ``predict`` as that song's); stereo, other sample rates and
sample formats are converted. ``load_clip`` is the one entry point for both: whatever goes wrong while
decoding or resampling one file (a MemoryError included) is that file's ``AudioError``, never the job's end.

Bounded work per file: a sample rate above ``MAX_SAMPLE_RATE`` is refused from the header, before any
sample is decoded; resampling uses torchaudio's windowed-sinc resampler, whose kernel holds
``up * down`` phases for a ratio ``up/down`` in lowest terms (44,101 Hz -> 16 kHz is 16000/44101: a
multi-GB kernel). ``resample_ratio`` keeps the exact ratio when ``up * down <= MAX_RESAMPLE_KERNEL``
(every common rate: 8, 11.025, 16, 22.05, 24, 32, 44.1, 48, 88.2, 96, 176.4, 192, 352.8, 384 kHz),
and otherwise takes the nearest ratio within that bound: the source is then treated as up to 5e-4
faster or slower than its header says (under one cent of pitch; ``RATE_TOLERANCE``).
"""

from __future__ import annotations

import dataclasses
import io
import logging
import math
import re
from fractions import Fraction

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from genre_sweep.errors import GenreSweepError, one_line

log = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".au", ".flac", ".ogg", ".mp3")
# Peak below one 16-bit step: nothing a 16-bit source could have recorded.
SILENCE_PEAK = 1.0 / 32768
MAX_SAMPLE_RATE = 384_000  # the highest rate audio interfaces record at; a header above it is refused
MAX_RESAMPLE_KERNEL = 1 << 20  # up * down of a resampling ratio: torchaudio's kernel stays under ~10 MB
RATE_TOLERANCE = 5e-4  # the largest relative rate error ``resample_ratio`` allows (tested over every rate)


# libsndfile's log line for a chunk whose header size disagrees with the bytes present.
_CHUNK_SIZE = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
_STREAMING_SIZES = (0, 0xFFFFFFFF, 0x7FFFFFFF)  # placeholders written by tools that stream WAV
_IN_MEMORY_NAME = re.compile(r"Error opening <_io\.BytesIO object at 0x[0-9a-f]+>: ")  # says nothing, varies per run


class AudioError(GenreSweepError, ValueError):
    """This input can't become rows; the message is the reason recorded for it."""


@dataclasses.dataclass(frozen=True)
class Clip:
    wave: np.ndarray  # (N,) float32 mono at ``sample_rate``
    sample_rate: int
    source_sample_rate: int
    source_channels: int
    source_subtype: str

    @property
    def seconds(self) -> float:
        return len(self.wave) / self.sample_rate


def decode(data: bytes) -> tuple[np.ndarray, int, str]:
    """Decode a whole file's bytes: (frames, channels) float32 in [-1, 1] for integer formats, rate, subtype."""
    if len(data) == 0:
        raise AudioError("empty file (0 bytes)")
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            if f.samplerate > MAX_SAMPLE_RATE:
                raise AudioError(
                    f"sample rate {f.samplerate} Hz is above the {MAX_SAMPLE_RATE} Hz accepted (not decoded)"
                )
            truncated = _CHUNK_SIZE.search(f.extra_info)
            if truncated and int(truncated[1]) > int(truncated[2]) and int(truncated[1]) not in _STREAMING_SIZES:
                raise AudioError(
                    f"truncated: the header declares {truncated[1]} bytes of audio, the file holds {truncated[2]}"
                )
            wave = f.read(dtype="float32", always_2d=True)
            return wave, f.samplerate, f.subtype
    except AudioError:
        raise
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise AudioError(f"cannot decode as audio: {_IN_MEMORY_NAME.sub('', str(e))}") from e


def to_mono(wave: np.ndarray) -> np.ndarray:
    """(frames, channels) -> (frames,) by averaging the channels."""
    return wave.mean(axis=1, dtype=np.float32) if wave.shape[1] > 1 else wave[:, 0]


def resample_ratio(source_rate: int, target_rate: int) -> tuple[int, int]:
    """(up, down): resampling multiplies the rate by up/down. The exact ratio in lowest terms when its kernel fits
    (``up * down <= MAX_RESAMPLE_KERNEL``), else the closest ratio that fits (relative error < ``RATE_TOLERANCE``
    for every source rate up to ``MAX_SAMPLE_RATE``)."""
    exact = Fraction(target_rate, source_rate)
    if exact.numerator * exact.denominator <= MAX_RESAMPLE_KERNEL:
        return exact.numerator, exact.denominator
    below_one = exact if exact < 1 else 1 / exact
    # p/q ~ x with p*q ~ x*q^2: a denominator bound of sqrt(bound / x) keeps the product within the bound
    limit = math.isqrt(int(MAX_RESAMPLE_KERNEL / below_one))
    while True:
        approx = below_one.limit_denominator(limit)
        if approx.numerator * approx.denominator <= MAX_RESAMPLE_KERNEL:
            break
        limit -= 1
    if exact > 1:
        approx = 1 / approx
    return approx.numerator, approx.denominator


def resample(wave: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """``wave`` at ``target_rate``, by the ratio ``resample_ratio`` gives (bounded work for any source rate)."""
    if source_rate == target_rate:
        return wave
    up, down = resample_ratio(source_rate, target_rate)
    if Fraction(up, down) != Fraction(target_rate, source_rate):
        log.debug("resampling %d Hz -> %d Hz as %d/%d (kernel bound)", source_rate, target_rate, up, down)
    out = AF.resample(torch.from_numpy(np.ascontiguousarray(wave)), down, up)
    return out.numpy()


def load_clip(data: bytes, sample_rate: int, min_seconds: float) -> Clip:
    """Decode, check and convert one file; raises AudioError naming why it is unusable, for any failure."""
    try:
        return _load_clip(data, sample_rate, min_seconds)
    except AudioError:
        raise
    except Exception as e:  # MemoryError included: one file's failure is that file's rejection, never the job's end
        log.debug("decoding or resampling failed unexpectedly", exc_info=True)  # the reason is recorded; its trace here
        detail = f": {one_line(e)}" if str(e).strip() else ""
        raise AudioError(f"decoding or resampling failed: {type(e).__name__}{detail}") from e


def _load_clip(data: bytes, sample_rate: int, min_seconds: float) -> Clip:
    wave, source_rate, subtype = decode(data)
    if wave.shape[0] == 0:
        raise AudioError("no audio frames")
    if not np.isfinite(wave).all():
        raise AudioError("contains NaN or infinite samples")
    if float(np.abs(wave).max()) < SILENCE_PEAK:
        raise AudioError("digital silence (peak below one 16-bit step)")
    seconds = wave.shape[0] / source_rate
    if seconds < min_seconds:
        raise AudioError(f"too short: {seconds:.3f} s < min_seconds {min_seconds} s")
    mono = resample(to_mono(wave), source_rate, sample_rate).astype(np.float32, copy=False)
    return Clip(mono, sample_rate, source_rate, wave.shape[1], subtype)
