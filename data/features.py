"""AST input features: transformers' ``ASTFeatureExtractor`` recipe, over windows covering a whole clip.

The Kaldi fbank is computed once per clip and sliced: every Kaldi frame depends only on its own
400 samples, so window ``w`` equals the extractor's output on the waveform slice it covers.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torchaudio.compliance import kaldi

SAMPLE_RATE = 16_000
FRAME_SHIFT = 160  # 10 ms at 16 kHz
FRAME_LENGTH = 400  # 25 ms at 16 kHz
# AudioSet statistics used by ASTFeatureExtractor (and the MIT/ast-finetuned-audioset checkpoints).
AST_MEAN = -4.2677393
AST_STD = 4.5689974


def fbank(wave: np.ndarray, mel_bins: int = 128) -> np.ndarray:
    """Raw log-mel fbank, (T, mel_bins) float32, exactly as ASTFeatureExtractor calls torchaudio."""
    if len(wave) < FRAME_LENGTH:  # Kaldi needs one whole frame; the extractor would fail too
        wave = np.pad(wave, (0, FRAME_LENGTH - len(wave)))
    out = kaldi.fbank(
        torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32)).unsqueeze(0),
        sample_frequency=SAMPLE_RATE,
        window_type="hanning",
        num_mel_bins=mel_bins,
    )
    return out.numpy()


def normalise(fb: np.ndarray) -> np.ndarray:
    return (fb - AST_MEAN) / (2 * AST_STD)


def window_starts(n_frames: int, frames: int) -> list[int]:
    """Start frames of the fewest evenly spaced windows of ``frames`` that cover ``n_frames``."""
    if n_frames <= frames:
        return [0]
    count = math.ceil(n_frames / frames)
    return [int(round(s)) for s in np.linspace(0, n_frames - frames, count)]


def windows(fb: np.ndarray, frames: int, starts: list[int] | None = None) -> tuple[np.ndarray, list[int]]:
    """Normalised windows (W, frames, mel) of a raw fbank, zero-padded (before normalising) when short."""
    starts = window_starts(fb.shape[0], frames) if starts is None else starts
    out = np.zeros((len(starts), frames, fb.shape[1]), dtype=np.float32)
    for i, s in enumerate(starts):
        part = fb[s : s + frames]
        out[i, : part.shape[0]] = part
    return normalise(out), starts


def clip_windows(wave: np.ndarray, frames: int, mel_bins: int) -> tuple[np.ndarray, list[int]]:
    """A clip's normalised windows (W, frames, mel) float32 and their start frames."""
    return windows(fbank(wave, mel_bins), frames)
