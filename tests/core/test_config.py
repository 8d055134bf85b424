import pytest

from genre_sweep.config import ConfigError, resolve
from genre_sweep.data.configs import PrepareConfig


def test_flags_override_the_yaml_file_which_overrides_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("source: /a\nout: /b\nseed: 3\nframes: 512\n")
    cfg = resolve(PrepareConfig, {"seed": "9", "effects": "echo,highpass"}, str(path))
    assert (cfg.source, cfg.seed, cfg.frames, cfg.effects) == ("/a", 9, 512, ("echo", "highpass"))
    assert cfg.mel_bins == 128


def test_a_bare_yaml_off_is_the_word_where_a_field_offers_it(tmp_path):
    from genre_sweep.model.configs import TrainConfig

    path = tmp_path / "c.yaml"
    path.write_text("shards: /a\nout: /b\ncompile: off\n")  # YAML 1.1 reads it as false
    assert resolve(TrainConfig, {}, str(path)).compile == "off"
    path.write_text("source: /a\nout: /b\noverwrite: off\n")  # a bool field keeps the boolean
    assert resolve(PrepareConfig, {}, str(path)).overwrite is False


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"split": "0.5,0.2"}, "split must be three fractions"),
        ({"effects": "reverb"}, "effects \\['reverb'\\] are unknown"),
        ({"frames": "abc"}, "frames: 'abc' is not a valid int"),
        ({"colour": "red"}, "unknown config field"),
        ({"genres": "jazz"}, "at least two distinct"),
    ],
)
def test_bad_values_are_named_with_the_rule(overrides, message):
    with pytest.raises(ConfigError, match=message):
        resolve(PrepareConfig, {"source": "/a", "out": "/b", **overrides})


def test_missing_required_fields_are_named():
    with pytest.raises(ConfigError, match="--source"):
        resolve(PrepareConfig, {"out": "/b"})


def test_effects_none_means_no_augmentation():
    assert resolve(PrepareConfig, {"source": "/a", "out": "/b", "effects": "none"}).effects == ()


def test_a_split_without_validation_tracks_is_refused_before_any_work():
    with pytest.raises(ConfigError, match=r"train and val > 0 .* got \(0\.9, 0\.0, 0\.1\)"):
        resolve(PrepareConfig, {"source": "/a", "out": "/b", "split": "0.9,0,0.1"})
    assert resolve(PrepareConfig, {"source": "/a", "out": "/b", "split": "0.5,0.5,0"}).split == (0.5, 0.5, 0.0)


def test_a_recorded_setting_is_unset_until_given_and_a_new_sweep_takes_its_default():
    from genre_sweep.config import build_parser, new_defaults
    from genre_sweep.tune.configs import SweepConfig

    cfg = resolve(SweepConfig, {"shards": "/a", "storage": "/b", "grace_period": "2"})
    assert (cfg.metric, cfg.seed, cfg.pretrained, cfg.grace_period) == (None, None, None, 2)  # left out: unset
    new = new_defaults(cfg)
    assert (new.metric, new.seed, new.pretrained, new.grace_period, new.mode) == ("val_clip_acc", 0, "small", 2, None)
    text = build_parser(SweepConfig, "sweep", "").format_help()
    assert "(default: val_clip_acc; a resumed sweep and retrain take the sweep record's)" in " ".join(text.split())


def test_a_typed_replace_types_and_validates_each_value_as_a_flag():
    from genre_sweep.config import replace_typed
    from genre_sweep.model.configs import TrainConfig

    cfg = resolve(TrainConfig, {"shards": "/a", "out": "/b"})
    new = replace_typed(cfg, {"batch_size": "8", "learning_rate": 1, "compile": False})
    assert (new.batch_size, new.learning_rate, new.compile) == (8, 1.0, "off")
    assert isinstance(new.learning_rate, float) and new.out == "/b"
    with pytest.raises(ConfigError, match="trial: batch_size must be >= 1, got 0"):
        replace_typed(cfg, {"batch_size": 0}, "trial: ")
    with pytest.raises(ConfigError, match="trial: unknown config field 'colour'"):
        replace_typed(cfg, {"colour": 1}, "trial: ")
