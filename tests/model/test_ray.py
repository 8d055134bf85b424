"""The trainer and predictor on real local Ray: shared in-memory data, and prediction through Ray Data."""

import json

import numpy as np
import ray
import soundfile as sf

from genre_sweep.model.data import share
from genre_sweep.model.export import export_model
from genre_sweep.model.predict import main as predict_main
from genre_sweep.model.train import train
from tests.model.conftest import quick_config


def test_trials_share_one_zero_copy_copy_of_the_data_through_the_object_store(small_shards, small_data, tmp_path):
    ref = share(small_data)

    @ray.remote(num_cpus=1)
    def trial(data, out):  # Ray resolves the ObjectRef argument to the shared arrays
        result = train(quick_config(small_shards, out, num_train_epochs="1"), data)
        return data.split("train").features.flags.writeable, result.best_metrics["epoch"]

    writeable, epoch = ray.get(trial.remote(ref, str(tmp_path / "trial")))
    assert writeable is False  # backed by the object store's shared memory, not a private copy
    assert epoch == 1


def test_many_songs_are_predicted_through_ray_data(small_shards, small_data, tmp_path):
    result = train(quick_config(small_shards, tmp_path / "run", num_train_epochs="1"), small_data)
    model = export_model(result.model, tmp_path / "model", small_data.genres, 256, 128)
    songs = tmp_path / "songs"
    songs.mkdir()
    t = np.arange(22050 * 8) / 22050
    for i in range(5):
        sf.write(songs / f"song{i}.wav", (0.2 * np.sin(2 * np.pi * (200 + 50 * i) * t)).astype(np.float32), 22050)
    (songs / "broken.wav").write_bytes(b"")
    out = tmp_path / "pred.csv"
    code = predict_main(
        [
            str(songs),
            "--model",
            str(model),
            "--out",
            str(out),
            "--ray-threshold",
            "2",
            "--device",
            "cpu",
            "--windows",
            "4",
        ]
    )
    assert code == 0
    rows = json.loads(out.with_suffix(".json").read_text())
    assert len(rows) == 6
    assert sum(r["error"] is None for r in rows) == 5
    assert all(r["windows"] == 4 for r in rows if r["error"] is None)
