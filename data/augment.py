"""The six offline augmentations of the method (docs/method.md), as pure functions of (waveform, parameters, generator).

Tempo changes use pedalboard's Rubber Band time stretcher (pitch kept); the 2-pole filters are
torchaudio's biquads (FFmpeg's ``highpass``/``lowpass`` default, Butterworth Q); the 1-pole low-pass of
the bundle is pedalboard's first-order ``LowpassFilter``; the echo is FFmpeg's ``aecho`` formula
``y = out_gain * (in_gain * x + sum_i decay_i * x[t - delay_i])``, which no maintained library offers
with those parameters. The bundle carries both of its echoes (the original's filter string lost one).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pedalboard
import torch
import torchaudio.functional as AF

from genre_sweep.data.configs import EFFECTS

# The bundle's echo gains are not in the method (docs/method.md); these are FFmpeg's documented example
# (aecho=0.8:0.88).
BUNDLE_ECHO = {"in_gain": 0.8, "out_gain": 0.88, "delays_ms": [200, 400], "decays": [0.3, 0.3]}


def draw_params(effect: str, rng: np.random.Generator) -> dict[str, Any]:
    """Parameters for ``effect``, drawn from the method's ranges (docs/method.md) with ``rng``."""
    if effect == "fast_tempo":
        return {"tempo": float(rng.choice([1.6, 1.7, 1.8, 1.9]))}
    if effect == "slow_tempo":
        return {"tempo": float(rng.choice([0.6, 0.7, 0.8]))}
    if effect == "highpass":
        return {"cutoff_hz": int(rng.integers(1400, 1600))}
    if effect == "lowpass":
        return {"cutoff_hz": int(rng.integers(900, 1100))}
    if effect == "echo":
        return {
            "in_gain": round(float(rng.uniform(0.60, 0.98)), 4),
            "out_gain": round(float(rng.uniform(0.60, 0.98)), 4),
            "delays_ms": [int(rng.integers(50, 500))],
            "decays": [float(rng.choice([0.2, 0.3, 0.4]))],
        }
    if effect == "bundle":
        return {
            "lowpass_1pole_hz": int(rng.integers(500, 800)),
            "tempo": float(rng.choice([0.6, 0.7, 0.8, 0.9])),
            **BUNDLE_ECHO,
        }
    raise ValueError(f"unknown effect {effect!r}; known: {EFFECTS}")


def tempo(wave: np.ndarray, sr: int, factor: float, high_quality: bool) -> np.ndarray:
    """Play ``factor`` times faster with the pitch kept; the output is ``len / factor`` long."""
    out = pedalboard.time_stretch(wave, sr, stretch_factor=factor, high_quality=high_quality)
    return out[0]


def biquad(wave: np.ndarray, sr: int, cutoff_hz: float, kind: str) -> np.ndarray:
    """2-pole Butterworth (Q = 1/sqrt 2) high- or low-pass."""
    fn = AF.highpass_biquad if kind == "highpass" else AF.lowpass_biquad
    return fn(torch.from_numpy(wave), sr, float(cutoff_hz)).numpy()


def echo(wave: np.ndarray, sr: int, in_gain: float, out_gain: float, delays_ms: list, decays: list) -> np.ndarray:
    """FFmpeg ``aecho``: feed-forward echoes of the dry input, same length as the input."""
    out = in_gain * wave
    for delay_ms, decay in zip(delays_ms, decays, strict=True):
        d = int(round(sr * delay_ms / 1000))
        if d < len(wave):
            out[d:] += decay * wave[: len(wave) - d]
    return (out_gain * out).astype(np.float32)


def fit_length(wave: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    """Crop to ``n`` samples at a random offset, or pad a shorter output by repeating it.

    Repeating (rather than zeros) keeps every window of a sped-up clip full of music, so no training
    window is mostly silence labelled as a genre.
    """
    if len(wave) > n:
        offset = int(rng.integers(0, len(wave) - n + 1))
        return wave[offset : offset + n], {"crop_offset": offset}
    if len(wave) < n:
        return np.pad(wave, (0, n - len(wave)), mode="wrap"), {"pad": "repeat", "pad_samples": n - len(wave)}
    return wave, {}


def apply(effect: str, params: dict[str, Any], wave: np.ndarray, sr: int, high_quality: bool) -> np.ndarray:
    """Apply one effect with fixed parameters (no randomness here); output length may differ."""
    ops: dict[str, Callable[[], np.ndarray]] = {
        "fast_tempo": lambda: tempo(wave, sr, params["tempo"], high_quality),
        "slow_tempo": lambda: tempo(wave, sr, params["tempo"], high_quality),
        "highpass": lambda: biquad(wave, sr, params["cutoff_hz"], "highpass"),
        "lowpass": lambda: biquad(wave, sr, params["cutoff_hz"], "lowpass"),
        "echo": lambda: echo(wave, sr, params["in_gain"], params["out_gain"], params["delays_ms"], params["decays"]),
        "bundle": lambda: _bundle(wave, sr, params, high_quality),
    }
    if effect not in ops:
        raise ValueError(f"unknown effect {effect!r}; known: {EFFECTS}")
    return ops[effect]()


def _bundle(wave: np.ndarray, sr: int, params: dict[str, Any], high_quality: bool) -> np.ndarray:
    lowpassed = pedalboard.LowpassFilter(cutoff_frequency_hz=float(params["lowpass_1pole_hz"]))(wave, sr)
    stretched = tempo(np.ascontiguousarray(lowpassed, dtype=np.float32), sr, params["tempo"], high_quality)
    return echo(stretched, sr, params["in_gain"], params["out_gain"], params["delays_ms"], params["decays"])


def augment(
    wave: np.ndarray, sr: int, effects: tuple[str, ...], rng: np.random.Generator, high_quality: bool
) -> list[tuple[str, str, np.ndarray]]:
    """One copy per effect, each the source's length: [(effect, parameters as JSON, waveform)]."""
    copies = []
    for effect in effects:
        params = draw_params(effect, rng)
        out = apply(effect, params, wave, sr, high_quality).astype(np.float32, copy=False)
        out, fit = fit_length(out, len(wave), rng)
        copies.append((effect, json.dumps({**params, **fit}, sort_keys=True), out))
    return copies
