import pytest

from tests.conftest import prepare_small

GENRES = ("blues", "classical", "metal", "reggae")
QUICK_SPACE = """
space:
  learning_rate: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}
  batch_size: {type: categorical, choices: [8, 16]}
  num_train_epochs: {type: int, low: 3, high: 6}
fixed:
  gradient_accumulation_steps: 1
"""


@pytest.fixture(scope="session")
def sweep_shards(ray_local, tmp_path_factory):
    """4 genres x 8 clips of 6 s, windows of 256 frames, split 4/2/2 per genre."""
    return prepare_small(tmp_path_factory.mktemp("sweep-data"), GENRES, per_genre=8, split="0.5,0.25,0.25")


@pytest.fixture
def quick_space(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(QUICK_SPACE)
    return path
