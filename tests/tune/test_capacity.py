"""Planning from what the cluster can scale to: node types, their limits, and the trials they hold at once."""

from pathlib import Path

import pytest
import yaml

from genre_sweep.config import ConfigError
from genre_sweep.tune.capacity import cluster_capacity, from_cluster_config, from_live_nodes

CLUSTER = Path(__file__).resolve().parents[2] / "cluster.yaml"


def test_the_shipped_cluster_is_planned_from_its_gpu_workers_not_from_its_head():
    capacity = cluster_capacity(str(CLUSTER), nodes=[])
    assert capacity.autoscaling and capacity.source == str(CLUSTER)
    assert [t.name for t in capacity.holding(4, 0.5)] == ["gpu_worker", "gpu_spot_worker"]
    assert capacity.concurrency(4, 0.5) == 16  # 2 trials per A10G x 8 workers, none on the GPU-less head
    assert capacity.concurrency(1, 0) == 8 + 8 * 8  # CPU-only trials: the head and 8 workers (the cap), 8 each


def test_spot_and_on_demand_gpu_workers_share_the_clusters_cap():
    """cluster.yaml's on-demand and spot GPU types: each fills up to its own max_workers, both within the global cap."""
    config = yaml.safe_load(CLUSTER.read_text())
    gpu, spot = (config["available_node_types"][name] for name in ("gpu_worker", "gpu_spot_worker"))
    assert spot["resources"] == gpu["resources"] and spot["min_workers"] == 0
    assert spot["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    # a sweep on spot only: the on-demand type set to 0, the spot type holds every GPU worker
    gpu["max_workers"] = 0
    capacity = from_cluster_config(config, "spot.yaml")
    assert capacity.concurrency(4, 0.5) == 2 * min(spot["max_workers"], config["max_workers"])
    # a mix: 3 on-demand, 10 spot, at most 8 workers in all: 8 GPU workers, never 13
    gpu["max_workers"], spot["max_workers"] = 3, 10
    assert from_cluster_config(config, "mix.yaml").concurrency(4, 0.5) == 2 * 8
    # a higher cap: each type up to its own max (3 + 10 workers)
    config["max_workers"] = 20
    assert from_cluster_config(config, "mix.yaml").concurrency(4, 0.5) == 2 * (3 + 10)


def test_the_clusters_cap_on_workers_bounds_the_plan():
    config = {
        "max_workers": 3,
        "head_node_type": "h",
        "available_node_types": {
            "h": {"resources": {"CPU": 2}},
            "big": {"resources": {"CPU": 4, "GPU": 2}, "max_workers": 2},
            "small": {"resources": {"CPU": 1, "GPU": 1}, "max_workers": 5},
        },
    }
    capacity = from_cluster_config(config, "c.yaml")
    assert capacity.concurrency(1, 1) == 2 * 2 + 1 * 1  # the roomiest type first, then 1 worker left
    assert capacity.holding(1, 3) == []


def test_without_a_config_the_nodes_up_now_are_all_there_is():
    nodes = [{"Alive": True, "Resources": {"CPU": 2.0}}, {"Alive": False, "Resources": {"CPU": 8.0, "GPU": 1.0}}]
    capacity = from_live_nodes(nodes)
    assert not capacity.autoscaling and capacity.concurrency(1, 0) == 2 and capacity.holding(1, 1) == []


def test_an_unreadable_cluster_config_is_a_config_error(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("available_node_types: [1, 2\n")
    with pytest.raises(ConfigError, match=f"--cluster {bad}"):
        cluster_capacity(str(bad), nodes=[])
    bad.write_text(yaml.safe_dump({"cluster_name": "x"}))
    with pytest.raises(ConfigError, match="no usable head_node_type"):
        cluster_capacity(str(bad), nodes=[])
