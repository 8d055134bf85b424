"""A sweep on a real multi-node Ray cluster on this machine (ray.cluster_utils.Cluster); run by test_multinode.

Head (1 CPU), a CPU worker (2 CPUs) and a worker advertising a GPU (2 CPUs, 1 GPU): trials asking for a
GPU must all run on the GPU node. Prints one line, `OUTCOME <json>`, with what happened.
"""

import json
import sys

import ray
from ray.cluster_utils import Cluster

from genre_sweep.config import resolve
from genre_sweep.tune.configs import SweepConfig
from genre_sweep.tune.sweep import run_sweep

shards, storage, space = sys.argv[1:4]
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
cluster.add_node(num_cpus=2)
gpu_node = cluster.add_node(num_cpus=2, num_gpus=1)
cluster.wait_for_nodes()
ray.init(address=cluster.address, log_to_driver=False)
cfg = resolve(
    SweepConfig,
    {
        "shards": shards,
        "pretrained": "tiny",
        "storage": storage,
        "name": "mn",
        "space": space,
        "trials": "3",
        "gpus_per_trial": "0.5",
        "device": "cpu",  # the GPU is advertised, not real: run on CPUs on purpose
        "retrain": "false",
        "ray_address": cluster.address,
    },
)
results = run_sweep(cfg)
nodes = sorted({r.metrics["node_id"] for r in results})
print(
    "OUTCOME",
    json.dumps(
        {
            "trial_nodes": nodes,
            "gpu_node": gpu_node.node_id,
            "trials": len(results),
            "errors": sum(r.error is not None for r in results),
            "cluster_nodes": len(ray.nodes()),
        }
    ),
    flush=True,
)
ray.shutdown()
cluster.shutdown()
