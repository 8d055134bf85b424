import optuna.distributions as od
import pytest

from genre_sweep.config import ConfigError
from genre_sweep.tune.space import DEFAULT_SPACE, load_space


def test_the_default_space_is_the_method_s_nine_hyperparameters():
    space = load_space(None)
    d = space.distributions()
    assert set(d) == set(DEFAULT_SPACE) and len(d) == 9
    assert d["learning_rate"] == od.FloatDistribution(5e-6, 5e-4, log=True)
    assert d["batch_size"] == od.CategoricalDistribution([2, 4, 8, 16])
    assert d["num_train_epochs"] == od.IntDistribution(7, 20)
    assert space.max_epochs() == 20


def test_a_yaml_file_changes_removes_adds_and_fixes(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(
        "space:\n  encoder_min_layer_to_update: {type: int, low: 0, high: 11}\n  warmup_ratio: null\n"
        "  max_grad_norm: {type: float, low: 0.5, high: 2.0}\n"
        "fixed:\n  gradient_accumulation_steps: 1\n  compile: off\n"
    )
    space = load_space(str(path))
    assert space.distributions()["encoder_min_layer_to_update"] == od.IntDistribution(0, 11)
    assert "warmup_ratio" not in space.params and "max_grad_norm" in space.params
    assert space.fixed == {"gradient_accumulation_steps": 1, "compile": "off"}  # YAML's bare off, as meant


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("space:\n  colour: {type: int, low: 0, high: 1}\n", "'colour' is not a training setting"),
        ("space:\n  learning_rate: {type: float, low: 1, high: 0.1}\n", "not a valid float range"),
        ("space:\n  batch_size: {type: list}\n", "type must be float, int or categorical"),
        ("fixed:\n  batch_size: 4\n", "both searched and fixed"),
        ("spaces: {}\n", "unknown section"),
        ("fixed:\n  compile: fast\n", "fixed: compile must be one of auto, off, default, reduce-overhead, got 'fast'"),
        ("fixed:\n  gradient_accumulation_steps: 0\n", "fixed: gradient_accumulation_steps must be >= 1"),
        ("space:\n  compile: {type: categorical, choices: [off, default]}\n", "compile is not searched"),
        ("fixed:\n  metric: val_loss\n", "'metric' is not a training setting"),  # the sweep's own --metric
        ("fixed:\n  mode: min\n", "'mode' is not a training setting"),
        ("space:\n  seed: {type: int, low: 0, high: 9}\n", "'seed' is not a training setting"),
        ("space:\n  batch_size: {type: categorical, choices: [8, 0]}\n", "batch_size: choice 0: batch_size must be"),
        ("space:\n  learning_rate: {type: float, low: 0.0, high: 0.1}\n", "learning_rate: low 0.0: learning_rate must"),
    ],
)
def test_bad_space_files_are_named_with_the_problem(tmp_path, text, message):
    path = tmp_path / "s.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_space(str(path))


def test_the_prefix_cache_ends_below_every_trial_s_lowest_adapter(tmp_path):
    assert load_space(None).lowest_adapted_layer() == 10  # the method (docs/method.md): layers 10 to 11
    assert load_space(None).max_epochs() == 20
    path = tmp_path / "s.yaml"
    path.write_text("space:\n  encoder_min_layer_to_update: {type: categorical, choices: [11, 8, 9]}\n")
    assert load_space(str(path)).lowest_adapted_layer() == 8
    path.write_text("space:\n  encoder_min_layer_to_update: null\nfixed:\n  encoder_min_layer_to_update: 7\n")
    assert load_space(str(path)).lowest_adapted_layer() == 7
    path.write_text("space:\n  encoder_min_layer_to_update: null\n")  # neither: the trainer's default
    assert load_space(str(path)).lowest_adapted_layer() == 10


def test_a_space_written_as_yaml_reads_back_the_same(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(
        "space:\n  warmup_ratio: null\n  batch_size: {type: categorical, choices: [4, 8]}\nfixed:\n  compile: off\n"
    )
    space = load_space(str(path))
    (tmp_path / "copy.yaml").write_text(space.as_yaml())
    assert load_space(str(tmp_path / "copy.yaml")).differences(space) == []
    assert load_space(None).differences(space) != []
