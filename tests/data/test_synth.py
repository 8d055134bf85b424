import dataclasses
import io

import numpy as np
import soundfile as sf

from genre_sweep.data.audio import load_clip
from genre_sweep.data.configs import SynthConfig
from genre_sweep.data.features import clip_windows
from genre_sweep.data.synth import STYLES, clip_bytes


def test_the_same_seed_gives_the_same_file_and_another_seed_does_not():
    cfg = SynthConfig(out="unused", seconds=3.0)
    assert clip_bytes("jazz", 0, cfg) == clip_bytes("jazz", 0, cfg)
    assert clip_bytes("jazz", 0, cfg) != clip_bytes("jazz", 0, dataclasses.replace(cfg, seed=1))


def test_files_are_gtzan_format():
    data = clip_bytes("rock", 3, SynthConfig(out="unused", seconds=30.0))
    info = sf.info(io.BytesIO(data))
    assert (info.samplerate, info.channels, info.subtype, info.frames) == (22050, 1, "PCM_16", 30 * 22050)


def test_tempo_ranges_overlap_so_tempo_alone_does_not_give_the_genre():
    for name, style in STYLES.items():
        overlapping = [
            o for o, s in STYLES.items() if o != name and s.bpm[0] < style.bpm[1] and style.bpm[0] < s.bpm[1]
        ]
        assert len(overlapping) >= 5, name


def test_genres_are_learnable_from_spectra_but_vary_within_a_genre():
    # nearest-centroid on mean log-mel spectra: well above chance on unseen clips, far from perfect copies
    cfg = SynthConfig(out="unused", seconds=6.0)
    genres = list(STYLES)

    def spectrum(genre: str, i: int) -> np.ndarray:
        clip = load_clip(clip_bytes(genre, i, cfg), 16000, 1.0)
        return clip_windows(clip.wave, 512, 64)[0].mean(axis=(0, 1))

    train = {g: np.mean([spectrum(g, i) for i in range(4)], axis=0) for g in genres}
    test = [(g, spectrum(g, i)) for g in genres for i in range(4, 7)]
    hits = sum(min(genres, key=lambda c: np.linalg.norm(train[c] - x)) == g for g, x in test)
    assert hits / len(test) >= 0.4  # chance is 0.1
    a, b = spectrum("pop", 0), spectrum("pop", 1)
    assert np.linalg.norm(a - b) > 0.01  # clips of a genre differ


def test_every_genre_synth_accepts_has_a_style():
    from genre_sweep.data.configs import GTZAN_GENRES

    assert set(STYLES) == set(GTZAN_GENRES)  # SynthConfig validates genres against GTZAN_GENRES
