"""The sweep record: a new sweep's settings resolved once, and --resume/retrain reconciled with them."""

import json

import pytest

from genre_sweep.config import resolve
from genre_sweep.data.shards import Dataset
from genre_sweep.tune.configs import RetrainConfig, SweepConfig, SweepError
from genre_sweep.tune.record import SweepRecord, make_record, new_sweep, reconcile

MANIFEST = {"config": {"frames": 256}, "sources": {"fingerprint": "abc"}, "features": {}, "shards": [], "genres": []}


def recorded(tmp_path, space_text: str | None = None, **flags) -> SweepRecord:
    space = None
    if space_text is not None:
        space = tmp_path / "space.yaml"
        space.write_text(space_text)
    cfg = resolve(SweepConfig, {"shards": "/data", "storage": str(tmp_path), "space": space, **flags})
    cfg, loaded = new_sweep(cfg)
    record = make_record(cfg, loaded, Dataset("/data", MANIFEST), "sqlite:///x.db")
    return SweepRecord(**{k: v for k, v in json.loads(record.as_json()).items() if k not in ("written_by", "format")})


def test_a_new_sweep_records_its_settings_space_and_the_complete_trial_template(tmp_path):
    record = recorded(
        tmp_path,
        "space:\n  num_train_epochs: {type: int, low: 2, high: 5}\n  batch_size: null\nfixed:\n  batch_size: 4\n",
    )
    assert record.settings["metric"] == "val_clip_acc" and record.settings["mode"] == "max"
    assert record.settings["max_t"] == 5 and record.settings["pretrained"] == "small"
    assert record.template["batch_size"] == 4 and record.template["metric"] == "val_clip_acc"
    assert "shards" not in record.template and "out" not in record.template
    loss = recorded(tmp_path, None, metric="val_loss")
    assert loss.settings["mode"] == "min" and loss.template["mode"] == "min"
    cfg = resolve(RetrainConfig, {"storage": str(tmp_path), "shards": "/moved"})
    trial = record.train_config(cfg, learning_rate=0.01, seed=3)
    assert (trial.shards, trial.learning_rate, trial.seed, trial.batch_size) == ("/moved", 0.01, 3, 4)


def test_resume_and_retrain_take_what_was_left_out_from_the_record(tmp_path):
    record = recorded(tmp_path, None, metric="val_loss", seed="5", pretrained="tiny")
    data = Dataset("/data", MANIFEST)
    cfg = reconcile(resolve(SweepConfig, {"storage": str(tmp_path), "resume": "true"}), record, data, "--resume")
    assert (cfg.shards, cfg.metric, cfg.mode, cfg.seed, cfg.pretrained) == ("/data", "val_loss", "min", 5, "tiny")
    assert cfg.max_t == 20 and cfg.grace_period == 1
    same = resolve(RetrainConfig, {"storage": str(tmp_path), "shards": "/elsewhere", "metric": "val_loss", "seed": "5"})
    assert reconcile(same, record, Dataset("/elsewhere", MANIFEST), "retrain").shards == "/elsewhere"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            {"metric": "val_window_acc"},
            "--metric val_window_acc contradicts the sweep record of .*, which has val_loss",
        ),
        ({"mode": "max"}, "--mode max contradicts .* which has min"),
        ({"pretrained": "small"}, "--pretrained small contradicts .* which has tiny"),
        ({"grace_period": "2"}, "--grace-period 2 contradicts .* which has 1"),
        ({"trials": "9"}, "--trials 9 contradicts .* which has 35"),  # Tune would restore 35 and ignore it
        ({"max_concurrent_trials": "2"}, "--max-concurrent-trials 2 contradicts .* which has unset"),
    ],
)
def test_a_flag_that_contradicts_the_record_is_refused_naming_both_values(tmp_path, flags, message):
    record = recorded(tmp_path, None, metric="val_loss", pretrained="tiny")
    cfg = resolve(SweepConfig, {"storage": str(tmp_path), "resume": "true", **flags})
    with pytest.raises(SweepError, match=message):
        reconcile(cfg, record, Dataset("/data", MANIFEST), "--resume")


def test_other_data_or_another_space_is_refused(tmp_path):
    record = recorded(tmp_path, "fixed:\n  batch_size: 4\nspace:\n  batch_size: null\n")
    other = Dataset("/data", {**MANIFEST, "genres": ["jazz"]})
    cfg = resolve(RetrainConfig, {"storage": str(tmp_path), "shards": "/data"})
    with pytest.raises(SweepError, match="--shards /data holds other data than the sweep record"):
        reconcile(cfg, record, other, "retrain")
    # the recorded location prepared again since: refused too, though --shards was left out
    with pytest.raises(SweepError, match="the sweep's dataset /data holds other data .* prepared again since"):
        reconcile(resolve(RetrainConfig, {"storage": str(tmp_path)}), record, other, "retrain")
    same = Dataset("/data", MANIFEST)
    (tmp_path / "s2.yaml").write_text("fixed:\n  batch_size: 8\nspace:\n  batch_size: null\n")
    cfg = resolve(RetrainConfig, {"storage": str(tmp_path), "space": str(tmp_path / "s2.yaml")})
    with pytest.raises(SweepError, match="fixed batch_size: 8 given, 4 in the record"):
        reconcile(cfg, record, same, "retrain")
    (tmp_path / "s3.yaml").write_text("fixed:\n  batch_size: 4.0\nspace:\n  batch_size: null\n")  # the same, typed
    cfg = resolve(RetrainConfig, {"storage": str(tmp_path), "space": str(tmp_path / "s3.yaml")})
    assert reconcile(cfg, record, same, "retrain").shards == "/data"


def test_a_damaged_tune_state_is_put_back_from_its_whole_copy_or_is_one_line_naming_it(tmp_path, caplog):
    import logging
    import pickle
    import shutil

    from genre_sweep.store import StoreOptions
    from genre_sweep.tune.state import check_tune_state, keep_whole_copies

    cfg = resolve(RetrainConfig, {"storage": str(tmp_path), "name": "s"})
    root = tmp_path / "s"
    root.mkdir()
    (root / "experiment_state-2026-01-01_00-00-00.json").write_text('{"trial_data": [1, 2, 3]}')
    (root / "searcher-state-2026-01-01_00-00-00.pkl").write_bytes(pickle.dumps({"searcher": 1}))
    check_tune_state(cfg, "--resume")  # whole
    (root / "experiment_state-2026-01-02_00-00-00.json").write_text('{"trial_data": [1, 2, 3, 4]}')
    keep_whole_copies(str(root), StoreOptions())  # what a running sweep does every few seconds
    (root / "experiment_state-2026-01-02_00-00-00.json").write_text('{"trial_data": [1, 2')  # then cut off
    with caplog.at_level(logging.WARNING, logger="genre_sweep"):
        check_tune_state(cfg, "--resume")
    assert (root / "experiment_state-2026-01-02_00-00-00.json").read_text() == '{"trial_data": [1, 2, 3, 4]}'
    assert "was cut off" in caplog.text and "its last whole copy is put back" in caplog.text
    shutil.rmtree(root / ".state-copies")  # no copy: refused
    (root / "experiment_state-2026-01-02_00-00-00.json").write_text('{"trial_data": [1, 2')
    with pytest.raises(SweepError, match=r"--resume: Tune's state .*experiment_state-2026-01-02_00-00-00.json is da"):
        check_tune_state(cfg, "--resume")
    (root / "experiment_state-2026-01-02_00-00-00.json").unlink()
    (root / "searcher-state-2026-01-02_00-00-00.pkl").write_bytes(pickle.dumps({"searcher": 1})[:-3])
    with pytest.raises(SweepError, match=r"searcher-state-2026-01-02_00-00-00.pkl is damaged \(ValueError"):
        check_tune_state(cfg, "retrain")


def test_a_grace_period_beyond_the_spaces_epochs_is_one_line(tmp_path):
    from genre_sweep.config import ConfigError

    with pytest.raises(ConfigError, match=r"--grace-period 6 is above the most epochs a trial runs \(5: the space\)"):
        recorded(tmp_path, "space:\n  num_train_epochs: {type: int, low: 2, high: 5}\n", grace_period="6")
