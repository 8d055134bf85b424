import json

import numpy as np
import torch

from genre_sweep.cli import main
from genre_sweep.config import resolve
from genre_sweep.model.configs import AdapterSettings, PretrainConfig, TrainConfig
from genre_sweep.model.dora_ast import SHIPPED, backbone_config, build_model
from genre_sweep.model.pretrain import ATTRIBUTES, INFO, example, pretrain, save


def short(out, **more) -> PretrainConfig:
    """A pretraining run small enough for a test: 2 layers, windows of 2.56 s."""
    values = {"out": str(out), "clips": "384", "val_clips": "96", "epochs": "4", "batch_size": "16"}
    values |= {"learning_rate": "3e-3", "layers": "2", "hidden_size": "32", "heads": "2", "intermediate_size": "64"}
    return resolve(PretrainConfig, {**values, "frames": "256", "workers": "1", **more})


def test_the_sounds_are_the_same_for_the_same_seed_and_their_labels_cover_every_value():
    a, la = example(0, "train", 3, 256, 128)
    b, lb = example(0, "train", 3, 256, 128)
    c, _ = example(1, "train", 3, 256, 128)
    assert np.array_equal(a, b) and np.array_equal(la, lb) and not np.array_equal(a, c)
    labels = np.stack([example(0, "train", i, 64, 128)[1] for i in range(60)])
    for k, (name, values) in enumerate(ATTRIBUTES.items()):
        assert set(labels[:, k]) == set(range(len(values))), name


def test_a_short_pretraining_run_learns_its_task_and_saves_a_checkpoint_the_classifier_loads(tmp_path):
    cfg = short(tmp_path / "ast")
    model, info = pretrain(cfg)
    above = {a: info["val_accuracy"][a] - info["chance"][a] for a in ATTRIBUTES}
    assert sum(above.values()) / len(above) > 0.1, info["val_accuracy"]  # above chance on held-out sounds
    save(model, info, cfg, tmp_path / "ast")
    assert json.loads((tmp_path / "ast" / INFO).read_text())["settings"]["seed"] == 0
    classifier = build_model(str(tmp_path / "ast"), 5, AdapterSettings(min_layer=1), 256, 128)
    x = torch.randn(3, 256, 128)
    with torch.no_grad():  # the backbone is the pretrained one, weight for weight
        theirs = model.backbone(x).last_hidden_state
        ours = classifier.backbone(x).last_hidden_state
    torch.testing.assert_close(ours, theirs)


def test_pretrain_will_not_write_over_a_checkpoint_without_overwrite(tmp_path, capsys):
    (tmp_path / "ast").mkdir()
    (tmp_path / "ast" / "config.json").write_text("{}")
    assert main(["pretrain", "--out", str(tmp_path / "ast")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not empty: pass --overwrite" in err[0]


def test_the_shipped_default_is_the_pretrained_small_ast_and_learnt_its_task():
    assert TrainConfig.__dataclass_fields__["pretrained"].default == "small"
    folder = SHIPPED["small"]
    info = json.loads((folder / INFO).read_text())
    for a in ATTRIBUTES:  # every attribute well above chance on held-out sounds
        assert info["val_accuracy"][a] > info["chance"][a] + 0.15, (a, info["val_accuracy"])
    cfg, source = backbone_config("small", 1024, 128)
    assert source == str(folder) and (cfg.num_hidden_layers, cfg.hidden_size) == (12, 64)
    assert sum(f.stat().st_size for f in folder.iterdir()) < 5e6  # a few MB in the package
