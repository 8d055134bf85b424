"""A sweep on two GPU workers, one of them a spot instance that gets an interruption notice; run by test_multinode.

The head holds no CPUs; two workers of 2 CPUs + 1 (advertised) GPU each run the 4 trials (1 CPU + 0.5 GPU,
`--device cpu`), with `--max-failures 0`: a preemption counted as a failure would end its trial. Each worker runs
`genre-sweep spot-watch` against a fake instance-metadata endpoint on loopback (IMDSv2, as on EC2). Once both
trials on the spot worker have reported an epoch from it, its endpoint announces an interruption 12 s ahead, and
a replacement worker joins (what the autoscaler does for the pending trials); at the notice's time the spot
worker's processes are killed. Then every trial that moved is trained again, undisturbed, with the same seeds, in
this process. Prints one line, `OUTCOME <json>`, with what happened.
"""

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import optuna
import ray
from ray.cluster_utils import Cluster

from genre_sweep.config import resolve
from genre_sweep.tune import preemption
from genre_sweep.tune.configs import SweepConfig
from genre_sweep.tune.record import read_record
from genre_sweep.tune.retrain import trial_source
from genre_sweep.tune.sweep import run_sweep
from genre_sweep.tune.trial import train_on_node

shards, work, space = sys.argv[1:4]
NOTICE_AHEAD_S = 12

cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
steady = cluster.add_node(num_cpus=2, num_gpus=1)
spot = cluster.add_node(num_cpus=2, num_gpus=1)
cluster.wait_for_nodes()
ray.init(address=cluster.address, log_to_driver=True)


class Metadata(BaseHTTPRequestHandler):
    """EC2's instance metadata as far as spot notices go: a session token (IMDSv2), then the notice or a 404."""

    notice: bytes | None = None  # set on the spot worker's endpoint when the interruption is announced
    noticed_at: float | None = None

    def do_PUT(self) -> None:
        ok = self.path == "/latest/api/token" and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds")
        self.send_response(200 if ok else 400)
        self.end_headers()
        if ok:
            self.wfile.write(b"token-123")

    def do_GET(self) -> None:
        if self.headers.get("X-aws-ec2-metadata-token") != "token-123":
            self.send_response(401)
            self.end_headers()
        elif self.path == "/latest/meta-data/spot/instance-action" and type(self).notice:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(type(self).notice)
        else:
            self.send_response(404)
            self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


endpoints, watchers = {}, []
for node in (steady, spot):
    handler = type("Metadata", (Metadata,), {})  # an endpoint of its own per instance
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    endpoints[node.node_id] = handler
    watchers.append(
        subprocess.Popen(
            [
                *(sys.executable, "-m", "genre_sweep", "spot-watch"),
                *("--endpoint", f"{base}/latest/meta-data/spot/instance-action"),
                *("--token-endpoint", f"{base}/latest/api/token"),
                *("--interval", "0.5", "--ray-address", cluster.address, "--node-id", node.node_id),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    )

announced: list[float] = []
replacement: list = []
killed: list[float] = []


def preempt_once_both_report() -> None:
    """Once both trials on the spot worker have reported an epoch from it: the notice, a replacement worker, and at
    the notice's time the spot worker's processes killed."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        on_spot = [
            results
            for results in Path(work, "sweeps", "spot").glob("*/result.json")
            if spot.node_id in results.read_text()
        ]
        if len(on_spot) >= 2:
            break
        time.sleep(0.1)
    else:
        return
    at = time.time() + NOTICE_AHEAD_S
    when = datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    endpoints[spot.node_id].notice = json.dumps({"action": "terminate", "time": when}).encode()
    announced.append(time.time())
    # the replacement the autoscaler would launch for the pending trials: a `ray start` joining the cluster
    # (Cluster.add_node wants the main thread, which runs the sweep), in this script's process group
    replacement.append(
        subprocess.Popen(
            ["ray", "start", "--address", cluster.address, "--num-cpus", "2", "--num-gpus", "1", "--block"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
        )
    )
    time.sleep(max(0.0, at - time.time()))
    cluster.remove_node(spot, allow_graceful=False)
    killed.append(time.time())


chaos = threading.Thread(target=preempt_once_both_report, daemon=True)
chaos.start()
values = {
    "shards": shards,
    "pretrained": "tiny",
    "storage": f"{work}/sweeps",
    "name": "spot",
    "space": space,
    "trials": "4",
    "cpus_per_trial": "1",
    "gpus_per_trial": "0.5",
    "device": "cpu",
    "max_concurrent_trials": "4",
    "max_failures": "0",
    "scheduler": "none",  # every trial runs all its epochs
    "retrain": "false",
    "ray_address": cluster.address,
}
cfg = resolve(SweepConfig, values)
results = run_sweep(cfg)
chaos.join(timeout=60)
study = optuna.load_study(study_name="spot", storage=f"sqlite:///{work}/sweeps/spot/optuna.db")

record = read_record(cfg, "compare with")
source = trial_source(cfg, record)
trials = []
for r in results:
    df = r.metrics_dataframe
    rows = df.to_dict("records")
    moved = [row for row in rows if isinstance(row.get("preempted_node"), str)]
    trial = {
        "id": r.metrics["trial_id"],
        "nodes": list(dict.fromkeys(df["node_id"])),
        "epochs": [int(e) for e in df["epoch"]],
        "error": r.error is not None,
        "moved": [{k: row[k] for k in preemption.REPORTED} for row in moved],
        "final": {k: r.metrics[k] for k in ("train_loss", "val_loss", "val_clip_acc")},
        "left_in_preempted": sorted(str(p) for p in Path(r.path).glob("preempted/*")),
    }
    if spot.node_id in trial["nodes"]:  # trained again, undisturbed, with the same seeds
        with tempfile.TemporaryDirectory() as tmp:
            config = record.train_config(cfg, **r.config, out=f"{tmp}/run")
            undisturbed, _ = train_on_node(config, source)
        trial["undisturbed"] = {k: undisturbed.history[-1][k] for k in trial["final"]}
    trials.append(trial)

watch_out = []
for proc in watchers:
    if proc.poll() is None:
        proc.kill()
    watch_out.append(proc.communicate()[0][-2000:])
print(
    "OUTCOME",
    json.dumps(
        {
            "spot": spot.node_id,
            "steady": steady.node_id,
            "replacement": bool(replacement),
            "announced_at": announced[0] if announced else None,
            "killed_at": killed[0] if killed else None,
            "watch_codes": [p.returncode for p in watchers],
            "watch_out": watch_out,
            "trials": trials,
            "study_states": sorted(t.state.name for t in study.trials),
        }
    ),
    flush=True,
)
ray.shutdown()
for proc in replacement:  # `ray start --block` stops its node's processes on SIGTERM
    proc.terminate()
    proc.wait(timeout=30)
cluster.shutdown()
