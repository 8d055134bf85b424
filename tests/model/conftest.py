import pytest

from genre_sweep.config import resolve
from genre_sweep.model.configs import TrainConfig
from genre_sweep.model.data import load_data
from tests.conftest import prepare_small

GENRES = ("blues", "classical", "metal", "reggae")


@pytest.fixture(scope="session")
def small_shards(ray_local, tmp_path_factory):
    """4 genres x 16 clips of 6 s, windows of 256 frames; half the tracks train, half validate."""
    return prepare_small(tmp_path_factory.mktemp("model-data"), GENRES, per_genre=16, split="0.5,0.5,0")


@pytest.fixture(scope="session")
def small_data(small_shards):
    return load_data(str(small_shards), splits=("train", "val"))


def quick_config(shards, out, **overrides) -> TrainConfig:
    """Settings under which the tiny model learns the small corpus in seconds on a CPU."""
    values = {
        "shards": str(shards),
        "out": str(out),
        "pretrained": "tiny",
        "learning_rate": "3e-3",
        "batch_size": "8",
        "gradient_accumulation_steps": "1",
        "warmup_ratio": "0.1",
        "num_train_epochs": "2",
        "device": "cpu",
        **overrides,
    }
    return resolve(TrainConfig, values)
