import io
import resource

import numpy as np
import pytest
import soundfile as sf

from genre_sweep.data.audio import (
    MAX_RESAMPLE_KERNEL,
    MAX_SAMPLE_RATE,
    RATE_TOLERANCE,
    AudioError,
    load_clip,
    resample_ratio,
)
from tests.conftest import GRANTS_ANY_ALLOCATION, flac_declaring_2_tib


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


def test_a_sample_rate_above_384k_is_refused_from_the_header_before_the_samples_are_read():
    data = _encode(_tone(2, 16000), 768000)
    with pytest.raises(AudioError, match=r"^sample rate 768000 Hz is above the 384000 Hz accepted"):
        load_clip(data, 16000, min_seconds=0.001)
    # the header alone decides: with most of its samples cut off, the rate is still the reason, not the truncation
    with pytest.raises(AudioError, match=r"^sample rate 768000 Hz"):
        load_clip(data[:200], 16000, min_seconds=0.001)
    assert load_clip(_encode(_tone(2, 384000), 384000), 16000, min_seconds=1.0).source_sample_rate == 384000


def test_common_rates_resample_exactly_and_every_rate_up_to_384k_with_a_bounded_kernel():
    assert resample_ratio(22050, 16000) == (320, 441) and resample_ratio(44100, 16000) == (160, 441)
    assert resample_ratio(48000, 16000) == (1, 3) and resample_ratio(8000, 16000) == (2, 1)
    assert resample_ratio(11025, 16000) == (640, 441) and resample_ratio(384000, 16000) == (1, 24)
    # 16008 Hz is the worst case of the whole range (a ratio near 1 with a large denominator)
    for rate in [*range(1000, MAX_SAMPLE_RATE + 1, 97), 16008, 44101, 22051, 383999]:
        up, down = resample_ratio(rate, 16000)
        assert up * down <= MAX_RESAMPLE_KERNEL, rate  # torchaudio's kernel: up phases of about down taps each
        assert abs(up / down * rate / 16000 - 1) < RATE_TOLERANCE, rate
    # in lowest terms, 44101 Hz -> 16 kHz is 16000/44101: a kernel of 16000 x 44135 float64, 5.6 GB
    assert resample_ratio(44101, 16000) != (16000, 44101)


@pytest.mark.parametrize("rate", [44101, 22051])
def test_an_odd_rate_becomes_16k_of_the_right_length_and_pitch_in_bounded_memory(rate):
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    clip = load_clip(_encode(_tone(3, rate), rate), 16000, min_seconds=1.0)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
    assert grown_mib < 300  # the exact ratio's kernel alone would take GBs (5.6 GB at 44101 Hz)
    assert clip.source_sample_rate == rate and clip.sample_rate == 16000
    assert abs(len(clip.wave) - 3 * 16000) <= 3 * 16000 * RATE_TOLERANCE + 1
    spectrum = np.abs(np.fft.rfft(clip.wave))
    assert abs(np.argmax(spectrum) * 16000 / len(clip.wave) - 440) < 1


@pytest.mark.skipif(GRANTS_ANY_ALLOCATION, reason="this kernel grants any allocation: no MemoryError to provoke")
def test_any_failure_while_decoding_even_a_memory_error_is_the_files_audio_error():
    with pytest.raises(AudioError, match=r"^decoding or resampling failed: MemoryError: Unable to allocate 2\.00 TiB"):
        load_clip(flac_declaring_2_tib(), 16000, min_seconds=1.0)
