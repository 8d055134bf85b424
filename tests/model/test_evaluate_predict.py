import json

import numpy as np
import pytest
import soundfile as sf

from genre_sweep.model.evaluate import main as evaluate_main
from genre_sweep.model.evaluate import per_genre_scores, plot_confusion
from genre_sweep.model.export import export_model
from genre_sweep.model.hf_pipeline import vote
from genre_sweep.model.predict import main as predict_main
from genre_sweep.model.train import train
from tests.model.conftest import quick_config


def _exported(small_shards, small_data, tmp_path):
    result = train(quick_config(small_shards, tmp_path / "run", num_train_epochs="2"), small_data)
    return export_model(result.model, tmp_path / "model", small_data.genres, 256, 128)


def test_evaluate_writes_metrics_per_genre_scores_and_a_confusion_matrix(small_shards, small_data, tmp_path, capsys):
    model = _exported(small_shards, small_data, tmp_path)
    out = tmp_path / "eval"
    assert (
        evaluate_main(
            [
                "--model",
                str(model),
                "--shards",
                str(small_shards),
                "--split",
                "val",
                "--out",
                str(out),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    matrix = np.array(json.loads((out / "confusion.json").read_text())["matrix"])
    assert matrix.sum() == metrics["clips"] == 32
    assert metrics["clip_acc"] == np.trace(matrix) / matrix.sum()
    assert set(metrics["per_genre"]) == {"blues", "classical", "metal", "reggae"}
    assert (out / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    assert "clip accuracy" in capsys.readouterr().out


def test_per_genre_scores_are_scikit_learns_and_a_normalised_confusion_matrix_is_drawn(tmp_path):
    true, pred = np.array([0, 0, 1, 1, 2, 2]), np.array([0, 1, 1, 1, 2, 0])
    scores = per_genre_scores(true, pred, ["blues", "metal", "pop", "reggae"])
    assert scores["blues"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert scores["metal"]["precision"] == 2 / 3 and scores["metal"]["recall"] == 1.0
    assert scores["reggae"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}  # never there: 0, no warning
    plot_confusion(
        np.eye(3) * 0.5 + 0.5 / 3, ["blues", "metal", "pop"], "test", tmp_path / "c.png", values_format=".2f"
    )
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


def test_predict_handles_a_short_a_long_and_a_broken_file(small_shards, small_data, tmp_path, capsys):
    model = _exported(small_shards, small_data, tmp_path)
    songs = tmp_path / "songs"
    songs.mkdir()
    t = np.arange(22050 * 40) / 22050
    music = (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 2 * t))).astype(np.float32)
    sf.write(songs / "long.flac", music, 22050)  # 40 s
    sf.write(songs / "short.wav", music[: 22050 // 2], 22050)  # half a second: shorter than a window
    (songs / "broken.mp3").write_bytes(b"not an mp3")
    out = tmp_path / "pred.csv"
    assert predict_main([str(songs), "--model", str(model), "--out", str(out), "--device", "cpu"]) == 0
    rows = {r["source"].rsplit("/", 1)[-1]: r for r in json.loads(out.with_suffix(".json").read_text())}
    assert rows["long.flac"]["windows"] == 20 and rows["long.flac"]["genre"] in small_data.genres
    assert rows["short.wav"]["windows"] == 1 and rows["short.wav"]["genre"] in small_data.genres
    assert rows["broken.mp3"]["genre"] is None and "unreadable" in rows["broken.mp3"]["error"]
    assert 0 < rows["long.flac"]["confidence"] <= 1
    assert "skipped" in capsys.readouterr().out
    assert out.read_text().startswith("source,genre,confidence,votes,windows,error")


def test_the_vote_is_a_majority_and_confidence_averages_the_voters():
    probs = np.array([[0.7, 0.3], [0.6, 0.4], [0.2, 0.8]])
    winner, confidence, votes = vote(probs)
    assert (winner, votes) == (0, 2) and confidence == pytest.approx(0.65)
    tie = np.array([[0.9, 0.1], [0.4, 0.6]])
    assert vote(tie)[0] == 0  # the tied genre with the higher mean probability


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("s3://no-such-bucket-here/songs", "s3://no-such-bucket-here/songs does not exist"),
        ("s3://{bucket}/no/such/key.wav", "s3://{bucket}/no/such/key.wav does not exist"),
        ("refused", "cannot read s3://{bucket}/songs: "),
    ],
    ids=["missing bucket", "missing key", "refused endpoint"],
)
def test_predict_from_an_s3_location_it_cannot_read_is_one_line(
    s3_endpoint, s3_bucket, tmp_path, capsys, where, message
):
    import socket

    endpoint = s3_endpoint
    if where == "refused":
        with socket.socket() as s:  # a port nothing listens on
            s.bind(("127.0.0.1", 0))
            endpoint = f"http://127.0.0.1:{s.getsockname()[1]}"
        where = "s3://{bucket}/songs"
    args = [where.format(bucket=s3_bucket), "--model", str(tmp_path), "--s3-endpoint", endpoint]
    assert predict_main([*args, "--out", str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: " + message.format(bucket=s3_bucket)), err
