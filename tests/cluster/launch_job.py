"""Submits `genre-sweep launch`'s job to a local Ray cluster with a dashboard and waits for it; run by a test.

Prints one line, `OUTCOME <json>`: the job's final status and the files it left.
"""

import json
import socket
import sys
import time
from pathlib import Path

import ray
from ray.cluster_utils import Cluster
from ray.job_submission import JobStatus, JobSubmissionClient

from genre_sweep.config import resolve
from genre_sweep.tune.configs import LaunchConfig
from genre_sweep.tune.launch import launch

cluster_yaml, corpus, bucket, space, project = sys.argv[1:6]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


port = free_port()
cluster = Cluster(
    initialize_head=True,
    head_node_args={
        "num_cpus": 2,
        "resources": {"cpu_node": 2},  # as cluster.yaml's CPU nodes: where launch runs prepare's tasks
        "include_dashboard": True,
        "dashboard_host": "127.0.0.1",
        "dashboard_port": port,
        # the job agent's default port (52365) may be held by another Ray on this machine, e.g. the test session's
        "dashboard_agent_listen_port": free_port(),
    },
)
address = f"http://127.0.0.1:{port}"
cfg = resolve(
    LaunchConfig,
    {
        "cluster": cluster_yaml,
        "source": corpus,
        "bucket": bucket,
        "name": "job",
        "pretrained": "tiny",
        "trials": "2",
        "cpus_per_trial": "1",
        "gpus_per_trial": "0",
        "ray_address": address,
        "project_dir": project,
        "python": sys.executable,
        "study_storage": f"sqlite:///{bucket}/study.db",
        "prepare_args": "--genres blues,metal --frames 256 --effects echo --split 0.5,0.25,0.25",
        "sweep_args": f"--space {space} --retrain-seeds 1 --confirm-top 1",
    },
)
for attempt in range(30):  # the job server comes up shortly after the head
    try:
        job_id = launch(cfg)
        break
    except Exception as e:  # noqa: BLE001 - retried until the dashboard answers
        print(f"launch attempt {attempt}: {e!r}", file=sys.stderr, flush=True)
        time.sleep(2)
else:
    raise SystemExit("the job was never submitted (see the attempts above)")
client = JobSubmissionClient(address)
deadline = time.monotonic() + 300
while client.get_job_status(job_id) not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
    if time.monotonic() > deadline:
        break
    time.sleep(3)
status = str(client.get_job_status(job_id))
logs = client.get_job_logs(job_id)
files = sorted(str(p.relative_to(bucket)) for p in Path(bucket).rglob("*") if p.is_file() and "report" in p.parts)
outcome = {"status": status, "job_id": job_id, "report": files, "log_tail": logs[-1500:]}
print("OUTCOME", json.dumps(outcome), flush=True)
ray.shutdown()
cluster.shutdown()
