"""The embedded default as a new user meets it: `train` with every default on a corpus of its own."""

from genre_sweep.cli import main
from genre_sweep.config import resolve
from genre_sweep.data.configs import SynthConfig
from genre_sweep.data.synth import generate
from genre_sweep.model.configs import TrainConfig
from genre_sweep.model.data import load_data
from genre_sweep.model.train import train


class Stop(Exception):
    pass


def test_train_with_every_default_learns_a_new_five_genre_corpus_within_four_epochs(ray_local, tmp_path):
    # 5 genres x 20 clips of 15 s, with a seed the project's other corpora do not use; prepared with every
    # default (1,024-frame windows, all six augmentations) but the split, so that validation has 40 clips
    genres = "blues,classical,metal,reggae,jazz"
    generate(
        resolve(
            SynthConfig,
            {"out": str(tmp_path / "corpus"), "per_genre": "20", "seconds": "15"}
            | {"genres": genres, "seed": "11", "workers": "2"},
        )
    )
    shards = tmp_path / "shards"
    assert main(["prepare", "--source", str(tmp_path / "corpus"), "--out", str(shards), "--split", "0.6,0.4,0"]) == 0
    cfg = resolve(TrainConfig, {"shards": str(shards), "out": str(tmp_path / "run")})  # every training default
    assert cfg.pretrained == "small"
    seen: list[dict] = []

    def after_four(metrics, ckpt):  # stops at epoch 4, or once the bar is reached (the rest would not change it)
        seen.append(metrics)
        if metrics["epoch"] == 4 or metrics["val_clip_acc"] >= 0.8:
            raise Stop

    try:
        train(cfg, load_data(str(shards), splits=("train", "val")), report=after_four)
    except Stop:
        pass
    assert len(seen) <= 4
    assert max(m["val_clip_acc"] for m in seen) >= 0.8, [round(m["val_clip_acc"], 3) for m in seen]
