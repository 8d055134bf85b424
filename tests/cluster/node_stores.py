"""Worker nodes on this machine, each with a node store of its own; run by test_multinode.

Each worker's raylet (and so each of its trial processes) gets its own ``GENRE_SWEEP_NODE_STORE``, as two
machines would each have their own disk. A sweep of 4 trials, 2 at once per node, builds each node's
dataset store and prefix cache; then a sweep with a node disk budget too small for the cache runs without
it. Then a third worker advertising a GPU joins, and a sweep whose trials ask for a GPU must run them all
there. Prints one line, `OUTCOME <json>`, with what happened.
"""

import json
import logging
import sys
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

from genre_sweep.config import resolve
from genre_sweep.tune.configs import SweepConfig
from genre_sweep.tune.sweep import run_sweep


class Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


shards, work, space = sys.argv[1:4]
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
roots = {}
for name in ("a", "b"):
    root = Path(work) / f"store-{name}"
    node = cluster.add_node(num_cpus=2, env_vars={"GENRE_SWEEP_NODE_STORE": str(root)})
    roots[node.node_id] = root
cluster.wait_for_nodes()
ray.init(address=cluster.address, log_to_driver=False)
warnings = Lines()
logging.getLogger("genre_sweep").addHandler(warnings)


def sweep(name: str, trials: int, **more: str):
    values = {
        "shards": shards,
        "pretrained": "tiny",
        "storage": str(Path(work) / "sweeps"),
        "name": name,
        "space": space,
        "trials": str(trials),
        "max_concurrent_trials": str(trials),
        "device": "cpu",
        "retrain": "false",
        "ray_address": cluster.address,
        **more,
    }
    return run_sweep(resolve(SweepConfig, values))


results = sweep("roomy", 4)
roomy = [{"node": r.metrics["node_id"], "cached": bool(r.metrics["prefix_cache"])} for r in results]
builds = {}
for node_id, root in roots.items():
    path = root / "builds.jsonl"
    builds[node_id] = [json.loads(line)["what"] for line in path.read_text().splitlines()] if path.exists() else []
warnings.lines.clear()
tight = sweep("tight", 2, node_disk_gb="0.001")
gpu_node = cluster.add_node(num_cpus=2, num_gpus=1, env_vars={"GENRE_SWEEP_NODE_STORE": str(Path(work) / "store-g")})
cluster.wait_for_nodes()
# the GPU is advertised, not real: run on CPUs on purpose; 0.5 GPU per trial fits only the GPU node
gpu = sweep("gpu", 3, gpus_per_trial="0.5", device="cpu", max_concurrent_trials="2")
print(
    "OUTCOME",
    json.dumps(
        {
            "roomy": roomy,
            "errors": sum(r.error is not None for r in [*results, *tight, *gpu]),
            "builds": builds,
            "tight_cached": [bool(r.metrics["prefix_cache"]) for r in tight],
            "tight_warnings": warnings.lines,
            "gpu_trials": len(gpu),
            "gpu_trial_nodes": sorted({r.metrics["node_id"] for r in gpu}),
            "gpu_node": gpu_node.node_id,
        }
    ),
    flush=True,
)
ray.shutdown()
cluster.shutdown()
