"""The node-local store: the same arrays as the in-memory path, built once per node, never read half-built."""

import subprocess
import sys

import numpy as np

from genre_sweep.data.shards import open_dataset
from genre_sweep.model.data import load_data
from genre_sweep.model.node_store import node_data, store_key
from genre_sweep.model.train import train
from tests.model.conftest import quick_config


def test_the_node_store_maps_the_same_arrays_as_the_in_memory_path(small_shards, tmp_path):
    in_memory = load_data(str(small_shards), splits=("train", "val", "test"))
    mapped = node_data(str(small_shards), splits=("train", "val", "test"), root=tmp_path)
    assert mapped.fingerprint == in_memory.fingerprint and mapped.genres == in_memory.genres
    for name, split in in_memory.splits.items():
        other = mapped.splits[name]
        assert other.clip_names == split.clip_names
        for column in ("features", "labels", "clips"):
            assert np.array_equal(getattr(other, column), getattr(split, column)), (name, column)
    train_features = mapped.splits["train"].features
    assert isinstance(train_features, np.memmap) and not train_features.flags.writeable  # mapped, read-only


def test_training_from_the_node_store_gives_identical_metrics(small_shards, small_data, tmp_path):
    cfg = quick_config(small_shards, tmp_path / "a", num_train_epochs="1")
    a = train(cfg, small_data)
    b = train(
        quick_config(small_shards, tmp_path / "b", num_train_epochs="1"),
        node_data(str(small_shards), splits=("train", "val"), root=tmp_path / "store"),
    )
    learned = [k for k in a.best_metrics if k.startswith(("val_", "train_loss"))]
    assert learned and {k: a.best_metrics[k] for k in learned} == {k: b.best_metrics[k] for k in learned}


BUILD = """
import logging, sys
logging.basicConfig(level=logging.INFO, format="%(message)s")
from genre_sweep.model.node_store import node_data
node_data(sys.argv[1], splits=("train",), root=sys.argv[2])
"""


def test_processes_starting_at_once_build_once_and_a_half_built_store_is_rebuilt_not_read(small_shards, tmp_path):
    root = tmp_path / "store"
    starts = [
        subprocess.Popen([sys.executable, "-c", BUILD, str(small_shards), str(root)], stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    logs = [p.communicate()[1] for p in starts]
    assert [p.returncode for p in starts] == [0, 0, 0], logs
    assert sum("materialised" in log for log in logs) == 1  # one build; the others waited and mapped it
    key = store_key(open_dataset(str(small_shards)))
    folder = root / f"dataset-{key}"

    # What a build killed half-way leaves: a temporary folder with some of the files. It is never read:
    # with the complete store gone too, the next call removes it and builds again.
    half = root / f".{folder.name}.tmp-deadbeef"
    half.mkdir()
    (half / "train.features.npy").write_bytes((folder / "train.features.npy").read_bytes()[:1000])
    for f in folder.iterdir():
        f.unlink()
    folder.rmdir()
    data = node_data(str(small_shards), splits=("train",), root=root)
    assert not half.exists() and (folder / "index.json").exists()
    assert np.array_equal(
        data.splits["train"].features, load_data(str(small_shards), splits=("train",)).splits["train"].features
    )
