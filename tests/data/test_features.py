import numpy as np
import pytest
from transformers import ASTFeatureExtractor

from genre_sweep.data.features import FRAME_SHIFT, SAMPLE_RATE, clip_windows, window_starts


def _wave(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(len(t))).astype(np.float32)


@pytest.mark.parametrize("seconds", [30.0, 10.24, 4.0])
def test_every_window_equals_ast_feature_extractor_on_its_slice(seconds):
    extractor = ASTFeatureExtractor()  # defaults: 128 bins, 1024 frames, AudioSet mean/std
    wave = _wave(seconds)
    windows, starts = clip_windows(wave, frames=1024, mel_bins=128)
    for w, start in zip(windows, starts, strict=True):
        piece = wave[start * FRAME_SHIFT : start * FRAME_SHIFT + 400 + 1023 * FRAME_SHIFT]
        ref = extractor(piece, sampling_rate=SAMPLE_RATE, return_tensors="np")["input_values"][0]
        assert np.abs(w - ref).max() <= 1e-4


def test_windows_cover_the_whole_clip():
    n_frames = 2998  # 30 s
    starts = window_starts(n_frames, 1024)
    assert starts == [0, 987, 1974]
    assert starts[-1] + 1024 == n_frames


def test_a_clip_shorter_than_a_window_gives_one_padded_window():
    assert window_starts(400, 1024) == [0]
    windows, _ = clip_windows(_wave(2.0), frames=1024, mel_bins=128)
    assert windows.shape == (1, 1024, 128)
