"""A spot notice drains a real Ray node: run by tests/core/test_spot.py in its own process (and process group).

A two-node Ray cluster on this machine (a head without CPUs, one worker), a fake metadata service, and
`genre-sweep spot-watch` as a subprocess watching it for the worker. No notice for a few polls, then one
30 s ahead: the watcher must exit 0 and the GCS list the worker as draining, its deadline the notice's time.
Prints one ``OUTCOME {json}`` line.
"""

import json
import os
import secrets
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

# Token authentication, as on a `ray start` cluster: set before Ray is imported (it reads RAY_AUTH_MODE then). The
# watcher gets the token but not RAY_AUTH_MODE, as a node whose token is in ~/.ray/auth_token: it must turn token
# mode on for its drain client itself.
os.environ |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_USAGE_STATS_ENABLED": "0"}

import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.core.imds import FakeIMDS  # noqa: E402


class Busy:
    def node(self) -> str:
        return ray.get_runtime_context().get_node_id()


def main() -> None:
    watcher_env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    head = cluster.head_node.node_id
    try:
        worker = cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        # a busy worker, as under a sweep: an idle node drained for preemption leaves at once, a busy one drains
        busy = ray.remote(num_cpus=1)(Busy).remote()  # the head has no CPUs: on the worker
        assert ray.get(busy.node.remote()) == worker.node_id
        with FakeIMDS() as imds:
            watcher = subprocess.Popen(
                [
                    *(sys.executable, "-m", "genre_sweep", "spot-watch"),
                    *("--endpoint", imds.endpoint, "--token-endpoint", imds.token_endpoint),
                    *("--ray-address", cluster.address, "--node-id", worker.node_id, "--interval", "0.2"),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=watcher_env,
            )
            time.sleep(2.0)  # polls with no notice: nothing happens
            quiet = watcher.poll() is None
            gets_before = imds.gets
            at = (datetime.now(UTC) + timedelta(seconds=30)).replace(microsecond=0)
            imds.notice = {"action": "terminate", "time": at.strftime("%Y-%m-%dT%H:%M:%SZ")}
            try:
                out, _ = watcher.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                watcher.kill()
                out, _ = watcher.communicate()
            puts, bad_ttl = imds.puts, imds.bad_ttl
        draining = ray._private.state.state.get_draining_nodes()
        ray.shutdown()
    finally:
        cluster.shutdown()
    outcome = {
        "quiet": quiet,
        "gets_before": gets_before,
        "puts": puts,
        "bad_ttl": bad_ttl,
        "rc": watcher.returncode,
        "log": out,
        "draining": draining,
        "worker": worker.node_id,
        "head": head,
        "notice_ms": int(at.timestamp() * 1000),
    }
    print("OUTCOME " + json.dumps(outcome), flush=True)


if __name__ == "__main__":
    main()
