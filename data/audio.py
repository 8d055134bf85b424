"""Decode audio bytes into a validated mono waveform at AST's sample rate.

Every way a file can be unusable raises ``AudioError`` with a one-line reason, which the pipeline
records as that input's rejection; stereo, other sample rates and sample formats are converted.
"""

from __future__ import annotations

import dataclasses
import io
import re

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from genre_sweep.errors import GenreSweepError

AUDIO_EXTENSIONS = (".wav", ".au", ".flac", ".ogg", ".mp3")
# Peak below one 16-bit step: nothing a 16-bit source could have recorded.
SILENCE_PEAK = 1.0 / 32768


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
            truncated = _CHUNK_SIZE.search(f.extra_info)
            if truncated and int(truncated[1]) > int(truncated[2]) and int(truncated[1]) not in _STREAMING_SIZES:
                raise AudioError(
                    f"truncated: the header declares {truncated[1]} bytes of audio, the file holds {truncated[2]}"
                )
            wave = f.read(dtype="float32", always_2d=True)
            return wave, f.samplerate, f.subtype
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise AudioError(f"cannot decode as audio: {_IN_MEMORY_NAME.sub('', str(e))}") from e


def to_mono(wave: np.ndarray) -> np.ndarray:
    """(frames, channels) -> (frames,) by averaging the channels."""
    return wave.mean(axis=1, dtype=np.float32) if wave.shape[1] > 1 else wave[:, 0]


def resample(wave: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    if source_rate == target_rate:
        return wave
    out = AF.resample(torch.from_numpy(np.ascontiguousarray(wave)), source_rate, target_rate)
    return out.numpy()


def load_clip(data: bytes, sample_rate: int, min_seconds: float) -> Clip:
    """Decode, check and convert one file; raises AudioError naming why it is unusable."""
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
