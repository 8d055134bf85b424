"""The trainer and predictor on real local Ray: data mapped from the node's store, prediction through Ray Data."""

import json
import pickle

import numpy as np
import ray
import soundfile as sf

from genre_sweep.model.export import export_model
from genre_sweep.model.node_store import NodeData
from genre_sweep.model.predict import main as predict_main
from genre_sweep.model.train import train
from tests.model.conftest import quick_config


def test_a_trial_maps_its_nodes_store_read_only_and_is_sent_only_where_the_data_is(small_shards, tmp_path):
    source = NodeData(str(small_shards), root=str(tmp_path / "store"))

    @ray.remote(num_cpus=1)
    def trial(source, out):  # as a sweep's trial does: the data is mapped on the node, not shipped
        data = source.load(("train", "val"))
        result = train(quick_config(small_shards, out, num_train_epochs="1"), data)
        features = data.split("train").features
        return isinstance(features, np.memmap), features.flags.writeable, result.best_metrics["epoch"]

    assert ray.get(trial.remote(source, str(tmp_path / "trial"))) == (True, False, 1)
    assert len(pickle.dumps(source)) < 1000  # what the driver sends: where the data is, not the data


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
