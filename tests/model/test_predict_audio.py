"""predict decodes each song by prepare's rules (``data.audio.load_clip``): an odd rate is resampled within bounded
memory, a rate above 384 kHz and any failure while decoding (a MemoryError included) skip that song only; a folder
is walked once (a link loop and a dangling link are listed, not followed)."""

import json

import numpy as np
import pytest
import soundfile as sf

from genre_sweep.model.configs import AdapterSettings
from genre_sweep.model.dora_ast import build_model
from genre_sweep.model.export import export_model
from genre_sweep.model.predict import main as predict_main
from tests.conftest import GRANTS_ANY_ALLOCATION, flac_declaring_2_tib


def _tone(seconds: float, rate: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 2 * t))).astype(np.float32)


@pytest.mark.skipif(GRANTS_ANY_ALLOCATION, reason="this kernel grants any allocation: no MemoryError to provoke")
def test_predict_skips_each_odd_song_with_its_reason_and_predicts_the_rest(tmp_path, capsys):
    model = export_model(build_model("tiny", 2, AdapterSettings(), 256, 128), tmp_path / "model", ["a", "b"], 256, 128)
    songs = tmp_path / "songs"
    songs.mkdir()
    sf.write(songs / "odd-rate.wav", _tone(4, 44101), 44101)  # exact resampling: a 5.6 GB kernel
    sf.write(songs / "too-fast.wav", _tone(4, 16000), 768000)
    (songs / "lying.flac").write_bytes(flac_declaring_2_tib())
    (songs / "loop").symlink_to(songs)  # walked once: the loop is listed, not followed
    (songs / "gone.wav").symlink_to(tmp_path / "deleted.wav")
    out = tmp_path / "pred.csv"
    assert predict_main([str(songs), "--model", str(model), "--out", str(out), "--device", "cpu"]) == 0
    rows = {r["source"].rsplit("/", 1)[-1]: r for r in json.loads(out.with_suffix(".json").read_text())}
    assert rows["odd-rate.wav"]["error"] is None and rows["odd-rate.wav"]["genre"] in ("a", "b")
    assert rows["too-fast.wav"]["error"].startswith("unreadable: sample rate 768000 Hz is above the 384000 Hz")
    assert rows["lying.flac"]["error"].startswith("unreadable: decoding or resampling failed: MemoryError")
    assert "a folder already walked" in rows["loop"]["error"] and "dangling link" in rows["gone.wav"]["error"]
    assert "1 songs predicted, 4 skipped" in capsys.readouterr().out


def test_predict_with_nothing_predicted_exits_1_with_the_reason(tmp_path, capsys):
    model = export_model(build_model("tiny", 2, AdapterSettings(), 256, 128), tmp_path / "model", ["a", "b"], 256, 128)
    empty = tmp_path / "no-audio"
    empty.mkdir()
    (empty / "notes.txt").write_text("not a song")
    out = tmp_path / "pred.csv"
    assert predict_main([str(empty), "--model", str(model), "--out", str(out), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert f"error: nothing predicted: no audio file in {empty}" in err and "Traceback" not in err
    assert json.loads(out.with_suffix(".json").read_text())[0]["error"] == "not an audio file extension"

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "cut.wav").write_bytes(b"RIFF\x00\x00")
    sf.write(broken / "silent.wav", np.zeros(16000, dtype=np.float32), 16000)
    assert predict_main([str(broken), "--model", str(model), "--out", str(out), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert f"error: nothing predicted: none of the 2 audio files in {broken} could be read (reasons in {out})" in err
    assert all(r["error"].startswith("unreadable: ") for r in json.loads(out.with_suffix(".json").read_text()))
