"""What the cluster can scale to: its node types and their limits, and how many trials they hold at once.

A sweep plans from the node types (a cluster config, or Ray's bootstrap config on a `ray up` head), not
from the nodes that happen to be up: GPU workers that scale from zero are not up when the sweep starts.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from genre_sweep.config import ConfigError
from genre_sweep.ray_start import BOOTSTRAP_CONFIG, read_cluster_config

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class NodeType:
    name: str
    cpus: float
    gpus: float
    max_count: int  # the most nodes of this type the cluster can have (the head: 1)
    head: bool = False

    def trials(self, cpus: float, gpus: float) -> int:
        """Trials of ``cpus`` + ``gpus`` one node of this type holds at once."""
        fits = [int(self.cpus // cpus)]
        if gpus:
            fits.append(int(self.gpus // gpus))
        return max(0, min(fits))

    def offer(self) -> str:
        return f"{self.name}: {self.cpus:g} CPU + {self.gpus:g} GPU (up to {self.max_count})"


@dataclasses.dataclass(frozen=True)
class Capacity:
    """The node types a sweep can use, where they came from, and the cluster's cap on worker nodes."""

    types: tuple[NodeType, ...]
    source: str  # the config file read, or "the nodes up now"
    autoscaling: bool  # node types from a cluster config: the autoscaler can start more nodes
    max_workers: int | None = None  # the config's global cap on worker nodes

    def holding(self, cpus: float, gpus: float) -> list[NodeType]:
        return [t for t in self.types if t.trials(cpus, gpus) >= 1]

    def concurrency(self, cpus: float, gpus: float) -> int:
        """Trials at once on the fully scaled cluster: each type's nodes filled, the roomiest types first,
        within the config's cap on worker nodes."""
        total, workers_left = 0, self.max_workers
        for t in sorted(self.types, key=lambda t: t.trials(cpus, gpus), reverse=True):
            count = t.max_count
            if workers_left is not None and not t.head:
                count = min(count, workers_left)
                workers_left -= count
            total += count * t.trials(cpus, gpus)
        return total

    def describe(self) -> str:
        return ", ".join(t.offer() for t in self.types)


def from_cluster_config(config: dict[str, Any], source: str) -> Capacity:
    """The node types of a `ray up` (or fake multi-node) cluster config."""
    try:
        head = config["head_node_type"]
        types = tuple(
            NodeType(
                name,
                float(node.get("resources", {}).get("CPU", 0)),
                float(node.get("resources", {}).get("GPU", 0)),
                1 if name == head else int(node.get("max_workers", config.get("max_workers", 0))),
                head=name == head,
            )
            for name, node in config["available_node_types"].items()
        )
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ConfigError(f"cluster config {source}: no usable head_node_type/available_node_types ({e})") from e
    cap = config.get("max_workers")
    return Capacity(types, source, autoscaling=True, max_workers=int(cap) if cap is not None else None)


def from_live_nodes(nodes: list[dict[str, Any]]) -> Capacity:
    """The nodes up now, each one of its own (for a cluster with no config to read)."""
    alive = [n["Resources"] for n in nodes if n.get("Alive")]
    types = tuple(NodeType(f"node {i}", float(r.get("CPU", 0)), float(r.get("GPU", 0)), 1) for i, r in enumerate(alive))
    return Capacity(types, "the nodes up now", autoscaling=False)


def cluster_capacity(cluster: str | None, nodes: list[dict[str, Any]]) -> Capacity:
    """From ``cluster`` (a config file), else the `ray up` head's bootstrap config, else the nodes up now."""
    if cluster:
        return from_cluster_config(read_cluster_config(cluster), cluster)
    if BOOTSTRAP_CONFIG.exists():
        return from_cluster_config(read_cluster_config(BOOTSTRAP_CONFIG), str(BOOTSTRAP_CONFIG))
    log.info(
        "no cluster config (--cluster, or %s on a `ray up` head): planning from the nodes up now", BOOTSTRAP_CONFIG
    )
    return from_live_nodes(nodes)
