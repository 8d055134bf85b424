import pytest

from data.config import resolve
from data.pipeline import run_prepare
from data.prepare import PrepareConfig
from tests.conftest import make_corpus

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
    root = tmp_path_factory.mktemp("sweep-data")
    corpus = make_corpus(root / "corpus", per_genre=8, seconds=6.0, genres=GENRES)
    out = root / "shards"
    run_prepare(
        resolve(
            PrepareConfig,
            {
                "source": str(corpus),
                "out": str(out),
                "genres": ",".join(GENRES),
                "frames": "256",
                "effects": "echo",
                "split": "0.5,0.25,0.25",
            },
        )
    )
    return out


@pytest.fixture
def quick_space(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(QUICK_SPACE)
    return path
