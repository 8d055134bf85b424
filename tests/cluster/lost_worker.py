"""Prepare and sweep on a multi-node Ray cluster on this machine, losing a worker mid-sweep; run by test_multinode.

The head holds no CPUs, so every prepare task and every trial runs on the two 2-CPU workers. Once both
trials on the second worker have reported from it and the driver holds their checkpoints, that worker is
removed (its processes killed, as when a spot instance goes away). Prints one line, `OUTCOME <json>`,
with what happened.
"""

import json
import logging
import sys
import threading
import time
from pathlib import Path

import optuna
import ray
from ray.cluster_utils import Cluster

from genre_sweep.config import resolve
from genre_sweep.data.configs import PrepareConfig
from genre_sweep.data.pipeline import run_prepare
from genre_sweep.tune.configs import SweepConfig
from genre_sweep.tune.sweep import run_sweep

corpus, work, space = sys.argv[1:4]
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
cluster.add_node(num_cpus=2)
doomed = cluster.add_node(num_cpus=2)
cluster.wait_for_nodes()
ray.init(address=cluster.address, log_to_driver=False)

manifest = run_prepare(
    resolve(
        PrepareConfig,
        {
            "source": corpus,
            "out": f"{work}/shards",
            "genres": "blues,metal",
            "frames": "256",
            "effects": "echo",
            "split": "0.5,0.25,0.25",
            "tracks_per_task": "1",
            "ray_address": cluster.address,
        },
    )
)

removed_at: list[float] = []
kept: set[str] = set()  # trials whose checkpoint the driver holds (SweepProgress logs each at DEBUG)


class Kept(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "checkpoint of epoch" in message:
            kept.add(message.split()[1].rstrip(":"))


progress = logging.getLogger("genre_sweep.tune.progress")
progress.addHandler(Kept())
progress.setLevel(logging.DEBUG)


def remove_worker_once_it_reports() -> None:
    """Kills the doomed node once both trials it runs have reported from it and the driver holds their checkpoints.

    Waiting for the driver's copy (not the result alone, nor the checkpoint's folder) is what makes "resumes from
    its checkpoint" the only right outcome: a trial killed before its first checkpoint reached the driver rightly
    starts again from epoch 1.
    """
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        on_doomed = {
            results.parent.name
            for results in Path(work, "sweeps", "lost").glob("*/result.json")
            if doomed.node_id in results.read_text()
        }
        if len(on_doomed) >= 2 and on_doomed <= kept:  # the node's 2 CPUs run 2 one-CPU trials
            cluster.remove_node(doomed, allow_graceful=False)
            removed_at.append(time.monotonic())
            return
        time.sleep(0.2)


watcher = threading.Thread(target=remove_worker_once_it_reports, daemon=True)
watcher.start()
cfg = resolve(
    SweepConfig,
    {
        "shards": f"{work}/shards",
        "pretrained": "tiny",
        "storage": f"{work}/sweeps",
        "name": "lost",
        "space": space,
        "trials": "4",
        "cpus_per_trial": "1",
        "max_concurrent_trials": "4",
        "grace_period": "40",
        "retrain": "false",
        "ray_address": cluster.address,
    },
)
results = run_sweep(cfg)
watcher.join(timeout=1)
for _ in range(120):  # the GCS marks a killed node dead after its health checks fail (seconds)
    if not any(n["Alive"] for n in ray.nodes() if n["NodeID"] == doomed.node_id):
        break
    time.sleep(0.5)
study = optuna.load_study(study_name="lost", storage=f"sqlite:///{work}/sweeps/lost/optuna.db")
trials = []
for r in results:
    df = r.metrics_dataframe
    trials.append(
        {
            "nodes": list(dict.fromkeys(df["node_id"])),
            "epochs": [int(e) for e in df["training_iteration"]],
            "error": r.error is not None,
        }
    )
print(
    "OUTCOME",
    json.dumps(
        {
            "prepare_nodes": manifest["summary"]["nodes"],
            "rows": manifest["summary"]["rows_out"],
            "removed": bool(removed_at),
            "doomed": doomed.node_id,
            "alive_nodes": sum(n["Alive"] for n in ray.nodes()),
            "trials": trials,
            "study_states": sorted(t.state.name for t in study.trials),
        }
    ),
    flush=True,
)
ray.shutdown()
cluster.shutdown()
