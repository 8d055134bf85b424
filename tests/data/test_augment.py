import json

import numpy as np
import pytest

from genre_sweep.data.augment import augment, draw_params, echo, tempo
from genre_sweep.data.configs import EFFECTS

SR = 16000


def _tone(freq: float, seconds: float = 4.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _peak_hz(x: np.ndarray) -> float:
    return float(np.argmax(np.abs(np.fft.rfft(x * np.hanning(len(x))))) * SR / len(x))


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))


@pytest.mark.parametrize("factor", [1.8, 0.7])
def test_tempo_changes_length_and_keeps_pitch(factor):
    x = _tone(440.0)
    y = tempo(x, SR, factor, high_quality=False)
    assert abs(len(y) - len(x) / factor) < 0.01 * len(x)
    assert abs(_peak_hz(y[SR // 2 : -SR // 2]) - 440) < 440 * 0.02


def test_every_copy_has_the_source_length_and_records_its_parameters():
    x = _tone(300.0) + _tone(3000.0)
    copies = augment(x, SR, EFFECTS, np.random.default_rng(0), high_quality=False)
    assert [c[0] for c in copies] == list(EFFECTS)
    for _effect, params, y in copies:
        assert len(y) == len(x) and y.dtype == np.float32 and np.isfinite(y).all()
        assert json.loads(params)
    by = {c[0]: c[2] for c in copies}
    low, high = _tone(300.0), _tone(3000.0)
    # high-pass at ~1.5 kHz keeps 3 kHz and cuts 300 Hz; low-pass at ~1 kHz does the opposite
    assert abs(np.dot(by["highpass"], high)) > 5 * abs(np.dot(by["highpass"], low))
    assert abs(np.dot(by["lowpass"], low)) > 5 * abs(np.dot(by["lowpass"], high))


def test_the_same_generator_seed_gives_identical_copies():
    x = _tone(440.0)
    a = augment(x, SR, EFFECTS, np.random.default_rng(7), high_quality=False)
    b = augment(x, SR, EFFECTS, np.random.default_rng(7), high_quality=False)
    for (ea, pa, ya), (eb, pb, yb) in zip(a, b, strict=True):
        assert ea == eb and pa == pb and np.array_equal(ya, yb)


def test_parameters_stay_in_method_ranges():
    rng = np.random.default_rng(0)
    for _ in range(200):
        assert draw_params("fast_tempo", rng)["tempo"] in (1.6, 1.7, 1.8, 1.9)
        assert draw_params("slow_tempo", rng)["tempo"] in (0.6, 0.7, 0.8)
        assert 1400 <= draw_params("highpass", rng)["cutoff_hz"] <= 1599
        assert 900 <= draw_params("lowpass", rng)["cutoff_hz"] <= 1099
        e = draw_params("echo", rng)
        assert 0.6 <= e["in_gain"] <= 0.98 and 0.6 <= e["out_gain"] <= 0.98
        assert 50 <= e["delays_ms"][0] <= 499 and e["decays"][0] in (0.2, 0.3, 0.4)
        b = draw_params("bundle", rng)
        assert 500 <= b["lowpass_1pole_hz"] <= 799 and b["tempo"] in (0.6, 0.7, 0.8, 0.9)
        assert b["delays_ms"] == [200, 400] and b["decays"] == [0.3, 0.3]


def test_echo_follows_ffmpeg_aecho_with_every_echo():
    impulse = np.zeros(SR, np.float32)
    impulse[0] = 1.0
    y = echo(impulse, SR, in_gain=0.8, out_gain=0.9, delays_ms=[200, 400], decays=[0.3, 0.3])
    nonzero = {int(i): round(float(y[i]), 4) for i in np.flatnonzero(y)}
    assert nonzero == {0: round(0.9 * 0.8, 4), int(0.2 * SR): round(0.9 * 0.3, 4), int(0.4 * SR): round(0.9 * 0.3, 4)}
