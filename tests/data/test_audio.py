import io

import numpy as np
import pytest
import soundfile as sf

from genre_sweep.data.audio import AudioError, load_clip


def _encode(wave: np.ndarray, sr: int, subtype: str = "PCM_16", fmt: str = "WAV") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wave, sr, subtype=subtype, format=fmt)
    return buf.getvalue()


def _tone(seconds: float, sr: int, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    x = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    return np.stack([x, 0.5 * x], axis=1) if channels == 2 else x


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (b"RIFF this is not audio at all, just text in a .wav", "cannot decode"),
        (_encode(_tone(3, 22050), 22050)[:30], "cannot decode"),  # truncated inside the header
        (_encode(_tone(3, 22050), 22050)[:60000], "truncated: the header declares 132300 bytes"),
        (_encode(_tone(3, 22050), 22050, fmt="FLAC")[:20000], "cannot decode"),
        (_encode(np.zeros(22050 * 3, np.float32), 22050), "digital silence"),
        (_encode(np.full(22050 * 3, np.nan, np.float32), 22050, subtype="FLOAT"), "NaN or infinite"),
        (_encode(np.full(22050 * 3, np.inf, np.float32), 22050, subtype="FLOAT"), "NaN or infinite"),
        (_encode(_tone(0.5, 22050), 22050), "too short"),
    ],
)
def test_unusable_input_is_refused_with_its_reason(data, reason):
    with pytest.raises(AudioError, match=reason):
        load_clip(data, 16000, min_seconds=1.0)


@pytest.mark.parametrize(
    ("wave", "sr", "subtype"),
    [
        (_tone(3, 44100, channels=2), 44100, "PCM_16"),
        (_tone(3, 8000), 8000, "PCM_16"),
        (_tone(3, 48000), 48000, "PCM_24"),
        (_tone(3, 22050), 22050, "PCM_U8"),
        (_tone(3, 22050), 22050, "FLOAT"),
    ],
)
def test_other_layouts_rates_and_sample_formats_become_16k_mono(wave, sr, subtype):
    clip = load_clip(_encode(wave, sr, subtype), 16000, min_seconds=1.0)
    assert clip.wave.ndim == 1 and clip.wave.dtype == np.float32
    assert clip.sample_rate == 16000 and clip.source_sample_rate == sr
    assert abs(clip.seconds - 3.0) < 0.01
    spectrum = np.abs(np.fft.rfft(clip.wave))
    assert abs(np.argmax(spectrum) * 16000 / len(clip.wave) - 440) < 2  # the tone survived conversion


def test_stereo_is_averaged_to_mono():
    stereo = _tone(2, 16000, channels=2)
    clip = load_clip(_encode(stereo, 16000, "FLOAT"), 16000, min_seconds=1.0)
    np.testing.assert_allclose(clip.wave, stereo.mean(axis=1), atol=1e-6)
    assert clip.source_channels == 2


@pytest.mark.parametrize("fmt", ["AU", "FLAC", "OGG", "MP3"])
def test_common_formats_decode(fmt):
    subtype = {"OGG": "VORBIS", "MP3": "MPEG_LAYER_III"}.get(fmt, "PCM_16")
    clip = load_clip(_encode(_tone(2, 22050), 22050, subtype=subtype, fmt=fmt), 16000, min_seconds=1.0)
    assert abs(clip.seconds - 2.0) < 0.1
