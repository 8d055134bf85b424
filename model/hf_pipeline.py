"""The exported model's pipeline: a whole song's genre, by the same windows and vote as ``genre-sweep predict``.

This file is copied, as it is, into every exported model folder as ``pipeline_genre_sweep.py``, and
``config.json``'s ``custom_pipelines`` names it for the ``audio-classification`` task, so that
``pipeline("audio-classification", model=folder, trust_remote_code=True)`` hears the whole song rather than
its first window (transformers' own audio-classification pipeline cuts every input to one window). It must
import nothing but numpy, torch and transformers; soundfile (to read files) and torchaudio (to resample) only
when the input needs them. Inside genre-sweep, ``genre_sweep.model.predict`` takes ``song_starts``,
``song_frames``, ``vote`` and ``genre_scores`` from here, so the pipeline and ``predict`` are one definition.

A song is cut into K windows (``song_windows`` in config.json, 20 unless the call passes ``windows=``) evenly
spaced from its start to its end; a song no longer than one window is one window, padded. Each window votes
for its most probable genre; the genre with most votes wins (a tie goes to the higher mean probability over
all windows). Each genre's ``score`` is its share of the votes, ``confidence`` its mean probability over the
windows that voted for it, ``votes`` and ``windows`` the counts; the list comes in the vote's order.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch
from transformers import Pipeline

SONG_WINDOWS = 20  # windows per song unless the model's config.json or the call says otherwise
FRAME_SHIFT_S = 0.010  # the Kaldi fbank ASTFeatureExtractor computes: a frame every 10 ms ...
FRAME_LENGTH_S = 0.025  # ... over 25 ms of audio


def song_frames(n_samples: int, sample_rate: int) -> int:
    """Fbank frames of ``n_samples`` (one at least: a shorter wave is padded to one frame's length)."""
    shift, length = round(FRAME_SHIFT_S * sample_rate), round(FRAME_LENGTH_S * sample_rate)
    return 1 + max(0, n_samples - length) // shift


def song_starts(n_frames: int, frames: int, k: int) -> list[int]:
    """Start frames of ``k`` windows of ``frames`` evenly spaced over a song of ``n_frames``, the first at its
    start and the last at its end; fewer when the song has fewer distinct starts; one when it fits a window."""
    if n_frames <= frames:
        return [0]
    return sorted({int(s) for s in np.round(np.linspace(0, n_frames - frames, k))})


def vote(probs: np.ndarray) -> tuple[int, float, int]:
    """(winning genre, its mean probability over the windows that voted for it, their count) of window
    probabilities ``probs`` (windows x genres)."""
    preds = probs.argmax(1)
    counts = np.bincount(preds, minlength=probs.shape[1])
    tied = np.flatnonzero(counts == counts.max())
    winner = int(tied[np.argmax(probs[:, tied].mean(0))])  # a tie goes to the higher mean probability
    return winner, float(probs[preds == winner, winner].mean()), int(counts[winner])


def genre_scores(probs: np.ndarray, labels: list[str]) -> list[dict[str, Any]]:
    """Every genre's share of the windows' votes (``score``), mean probability over the windows that voted for
    it (``confidence``, 0 without votes), ``votes`` and ``windows``, in the vote's order (``vote``'s winner
    first)."""
    preds = probs.argmax(1)
    counts = np.bincount(preds, minlength=probs.shape[1])
    mean = probs.mean(0)
    order = sorted(range(len(labels)), key=lambda g: (-counts[g], -mean[g]))
    return [
        {
            "label": labels[g],
            "score": float(counts[g] / len(probs)),
            "confidence": float(probs[preds == g, g].mean()) if counts[g] else 0.0,
            "votes": int(counts[g]),
            "windows": len(probs),
        }
        for g in order
    ]


def read_song(song: Any, sample_rate: int) -> np.ndarray:
    """A mono float32 wave at ``sample_rate`` from a file path, the file's bytes, a wave at ``sample_rate``
    (numpy or torch), or ``{"array" or "raw": wave, "sampling_rate": rate}``."""
    rate = sample_rate
    if isinstance(song, dict):
        rate = int(song["sampling_rate"])
        song = song["array"] if "array" in song else song["raw"]
    if isinstance(song, str):
        with open(song, "rb") as f:
            song = f.read()
    if isinstance(song, bytes):
        try:
            import soundfile
        except ImportError as e:
            raise ImportError("reading an audio file needs soundfile (pip install soundfile); or pass the wave") from e
        wave, rate = soundfile.read(io.BytesIO(song), dtype="float32", always_2d=True)
        song = wave.mean(axis=1, dtype=np.float32) if wave.shape[1] > 1 else wave[:, 0]
    wave = song.detach().cpu().numpy() if isinstance(song, torch.Tensor) else np.asarray(song)
    if wave.ndim == 2:  # (samples, channels) or (channels, samples): the channels are the short side
        wave = wave.mean(axis=int(np.argmin(wave.shape)), dtype=np.float32)
    wave = wave.astype(np.float32, copy=False)
    if rate != sample_rate:
        try:
            import torchaudio.functional
        except ImportError as e:
            raise ImportError(f"resampling {rate} Hz audio needs torchaudio; or pass it at {sample_rate} Hz") from e
        wave = torchaudio.functional.resample(torch.from_numpy(np.ascontiguousarray(wave)), rate, sample_rate).numpy()
    return wave


class SongGenrePipeline(Pipeline):
    """``audio-classification`` over a whole song: its windows' vote (see the module's docstring)."""

    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = True
    _load_tokenizer = False

    def _sanitize_parameters(self, top_k: int | None = None, windows: int | None = None, **kwargs):
        return ({"windows": windows} if windows else {}), {}, ({"top_k": top_k} if top_k else {})

    def preprocess(self, song: Any, windows: int | None = None) -> dict[str, torch.Tensor]:
        extractor = self.feature_extractor
        rate, frames = extractor.sampling_rate, extractor.max_length
        wave = read_song(song, rate)
        shift, length = round(FRAME_SHIFT_S * rate), round(FRAME_LENGTH_S * rate)
        if len(wave) < length:
            wave = np.pad(wave, (0, length - len(wave)))
        k = windows or getattr(self.model.config, "song_windows", SONG_WINDOWS)
        starts = song_starts(song_frames(len(wave), rate), frames, k)
        # window w covers the samples its frames read: the extractor computes its fbank and pads it when short
        span = (frames - 1) * shift + length
        parts = [wave[s * shift : s * shift + span] for s in starts]
        return extractor(parts, sampling_rate=rate, return_tensors="pt")

    def _forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        values = inputs["input_values"].to(self.model.dtype)
        return {"logits": self.model(input_values=values).logits}

    def postprocess(self, outputs: dict[str, torch.Tensor], top_k: int | None = None) -> list[dict[str, Any]]:
        probs = torch.softmax(outputs["logits"].float(), dim=-1).cpu().numpy()
        labels = [self.model.config.id2label[i] for i in range(probs.shape[1])]
        scores = genre_scores(probs, labels)
        return scores[:top_k] if top_k else scores
