"""The node-local store: the same arrays as the in-memory path, built once per node, never read half-built; the
prefix cache stored there the same way, and turned off when it does not fit."""

import json
import logging
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from genre_sweep.data.manifest import DatasetError
from genre_sweep.data.shards import open_dataset
from genre_sweep.model.configs import AdapterSettings
from genre_sweep.model.data import load_data
from genre_sweep.model.dora_ast import build_model
from genre_sweep.model.node_store import NodeData, node_data, node_sizes, store_key
from genre_sweep.model.prefix_cache import build_cache
from genre_sweep.model.train import train
from tests.model.conftest import quick_config


def builds(root):
    """What the store at ``root`` built, a name per build, from its builds.jsonl."""
    path = root / "builds.jsonl"
    return [json.loads(line)["what"] for line in path.read_text().splitlines()] if path.exists() else []


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
from genre_sweep.model.node_store import NodeData
data = NodeData(sys.argv[1], root=sys.argv[2], prefix_start=10).load(("train", "val"), "tiny", "cpu")
assert data.prefix is not None
"""


def test_processes_starting_at_once_build_once_and_a_half_built_store_is_rebuilt_not_read(small_shards, tmp_path):
    root = tmp_path / "store"
    starts = [  # three trials starting at once on one node: the dataset and each split's states are built once
        subprocess.Popen([sys.executable, "-c", BUILD, str(small_shards), str(root)], stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    logs = [p.communicate()[1] for p in starts]
    assert [p.returncode for p in starts] == [0, 0, 0], logs
    key = store_key(open_dataset(str(small_shards)))
    folder = root / f"dataset-{key}"
    built = builds(root)
    assert built[0] == folder.name and len(built) == 3, built
    assert {b.split("/")[1] for b in built[1:]} == {"train", "val"} and len({b.split("/")[0] for b in built[1:]}) == 1
    assert sum("materialised" in log for log in logs) == 1

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


def test_the_node_prefix_cache_holds_the_in_memory_caches_states_and_the_retrain_adds_only_the_test_split(
    sweep_shards, tmp_path
):
    shards, root = sweep_shards, tmp_path / "store"
    trial = NodeData(str(shards), root=str(root), prefix_start=10).load(("train", "val"), "tiny", "cpu")
    in_memory = load_data(str(shards), splits=("train", "val"))
    frames, mel_bins = in_memory.frames, in_memory.mel_bins
    model = build_model("tiny", len(in_memory.genres), AdapterSettings(min_layer=10), frames, mel_bins)
    expected = build_cache(model, in_memory, start=10, device=torch.device("cpu"))
    assert trial.prefix.key == expected.key
    for split in ("train", "val"):
        assert isinstance(trial.prefix.states[split], np.memmap)
        assert np.array_equal(trial.prefix.states[split], expected.states[split]), split
    retrain = NodeData(str(shards), root=str(root), prefix_start=10).load(("train", "val", "test"), "tiny", "cpu")
    assert [b.rsplit("/", 1)[-1] for b in builds(root)[1:]] == ["train", "val", "test"]  # the test split's added
    assert len(retrain.prefix.states["test"]) == len(retrain.splits["test"].labels) > 0
    sizes = node_sizes(open_dataset(str(shards)), "tiny", 10)
    on_disk = sum(p.stat().st_size for p in root.glob("prefix-*/*.npy"))
    assert abs(on_disk - sizes.cache) <= 3 * 128  # the expected size is the states' bytes (each file: a header)


def test_a_cache_over_the_disk_budget_is_turned_off_with_one_line(small_shards, tmp_path, caplog):
    source = NodeData(str(small_shards), root=str(tmp_path / "store"), prefix_start=10, budget_gb=0.001)
    with caplog.at_level(logging.WARNING, logger="genre_sweep.model.node_store"):
        data = source.load(("train", "val"), "tiny", "cpu")
    assert data.prefix is None
    (line,) = [r.getMessage() for r in caplog.records]
    assert "prefix cache off on this node" in line and "over the node disk budget of 0.001 GB" in line
    assert not list((tmp_path / "store").glob("prefix-*"))


def test_a_cache_build_killed_half_way_is_rebuilt_not_read(small_shards, small_data, tmp_path):
    root = tmp_path / "store"
    node_data(str(small_shards), splits=("train", "val"), root=root)  # the dataset first: the kill hits the cache
    build = subprocess.Popen([sys.executable, "-c", BUILD, str(small_shards), str(root)], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not list(root.glob("prefix-*/.train.states.npy.tmp-*")):  # the states being written
        assert build.poll() is None and time.monotonic() < deadline, "the build ended before it could be killed"
        time.sleep(0.002)
    build.send_signal(signal.SIGKILL)  # as a node losing a trial's process mid-build
    build.wait()
    (folder,) = [p for p in root.glob("prefix-*") if p.is_dir()]
    assert list(folder.glob(".train.states.npy.tmp-*")) and not (folder / "train.states.npy").exists()

    data = NodeData(str(small_shards), root=str(root), prefix_start=10).load(("train", "val"), "tiny", "cpu")
    assert not list(folder.glob(".*.tmp-*"))  # the half-written states were removed, never mapped
    model = build_model("tiny", len(small_data.genres), AdapterSettings(min_layer=10), 256, 128)
    expected = build_cache(model, small_data, start=10, device=torch.device("cpu"))
    assert np.array_equal(data.prefix.states["train"], expected.states["train"])


def test_a_flipped_byte_in_a_shard_stops_the_node_store_build_in_one_line_naming_it(small_shards, tmp_path):
    copy = tmp_path / "shards"
    shutil.copytree(small_shards, copy)
    manifest = open_dataset(str(copy)).manifest
    shard = manifest["shards"][-1]
    path = copy / manifest["version_dir"] / shard["path"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10  # one bit, inside the data pages: Parquet itself would read it back as other features
    path.write_bytes(bytes(data))
    root = tmp_path / "store"
    with pytest.raises(DatasetError) as e:
        node_data(str(copy), splits=("train", "val"), root=root)
    assert str(e.value).startswith(f"dataset {copy}: shard {shard['path']} is damaged: its sha256 is ")
    assert "\n" not in str(e.value)
    assert [p.name for p in root.iterdir() if not p.name.endswith(".lock")] == []  # nothing built, nothing half-built
