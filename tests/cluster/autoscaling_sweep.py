"""A sweep on an autoscaling cluster on this machine; run by test_multinode in its own session.

Ray's fake multi-node provider is the autoscaler machinery `ray up` uses, with raylets for nodes. Its
config is written here (Ray's wheel lacks fake_multi_node/example.yaml) and the cluster is started with
`ray start` in this script's session, never `AutoscalingCluster.start()` (which runs `ray stop --force`).
The head has 2 CPUs and no GPU; the worker type `gpu_worker` (1 CPU + 1 GPU) scales from 0 to 2. The
cluster uses token authentication, as `ray start` clusters do.

1. `genre-sweep sweep --ray-address` without the token: one error line saying what to set.
2. With it: 4 two-epoch trials of 0.5 CPU + 0.5 GPU (`--device cpu`: the GPUs are advertised, not real),
   planned from the cluster config. Meanwhile the nodes and the GPUs in use are sampled.
3. After the sweep, how long until the workers are gone.

Prints `OUTCOME <json>`.
"""

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import yaml

shards, space, work = sys.argv[1], sys.argv[2], Path(sys.argv[3])
work.mkdir(parents=True, exist_ok=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


ip, port = "127.0.0.1", free_port()
config = {
    "cluster_name": "fake-autoscaling",
    "max_workers": 2,
    "upscaling_speed": 1.0,
    "idle_timeout_minutes": 0.1,
    "provider": {
        "type": "fake_multinode",
        "use_node_id_as_ip": True,
        "disable_node_updaters": True,
        "disable_launch_config_check": True,
        "launch_multiple": True,
        "gcs_address": f"{ip}:{port}",
    },
    "auth": {},
    "docker": {},
    "head_node_type": "ray.head.default",
    "available_node_types": {
        "ray.head.default": {"resources": {"CPU": 2, "GPU": 0}, "node_config": {}, "min_workers": 0, "max_workers": 0},
        "gpu_worker": {
            "resources": {"CPU": 1, "GPU": 1, "object_store_memory": 150_000_000},
            "node_config": {},
            "min_workers": 0,
            "max_workers": 2,
        },
    },
    **{k: [] for k in ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands")},
    **{k: [] for k in ("head_start_ray_commands", "worker_start_ray_commands", "cluster_synced_files")},
    "file_mounts": {},
    "file_mounts_sync_continuously": False,
    "rsync_exclude": [],
    "rsync_filter": [],
}
cluster_yaml = work / "cluster.yaml"
cluster_yaml.write_text(yaml.safe_dump(config))

token = secrets.token_hex(32)
cluster_env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "RAY_ADDRESS")}
cluster_env |= {
    "RAY_FAKE_CLUSTER": "1",
    "AUTOSCALER_UPDATE_INTERVAL_S": "1",
    "RAY_AUTH_MODE": "token",
    "RAY_AUTH_TOKEN": token,
    "RAY_USAGE_STATS_ENABLED": "0",
}
temp_dir = Path(f"/tmp/gs-as-{port}")
ray_bin = str(Path(sys.executable).with_name("ray"))
started = subprocess.run(
    [
        ray_bin,
        "start",
        "--head",
        f"--node-ip-address={ip}",
        f"--port={port}",
        f"--autoscaling-config={cluster_yaml}",
        "--num-cpus=2",
        "--num-gpus=0",
        "--object-store-memory=200000000",
        f"--temp-dir={temp_dir}",
        f"--ray-client-server-port={free_port()}",
        "--include-dashboard=false",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        "--disable-usage-stats",
    ],
    env=cluster_env,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
    timeout=180,
)
assert started.returncode == 0, started.stderr[-3000:]
address = f"{ip}:{port}"
genre_sweep = [sys.executable, "-m", "genre_sweep"]
sweep = [
    "sweep",
    "--pretrained",
    "tiny",
    "--shards",
    shards,
    "--storage",
    str(work / "sweeps"),
    "--name",
    "as",
    "--space",
    space,
    "--trials",
    "4",
    "--grace-period",
    "2",
    "--cpus-per-trial",
    "0.5",
    "--gpus-per-trial",
    "0.5",
    "--device",
    "cpu",
    "--cluster",
    str(cluster_yaml),
    "--no-retrain",
    "--ray-address",
    address,
]


def stop_cluster() -> None:
    """SIGTERM, then SIGKILL, every process of this session but this one: GCS, raylets, monitor, workers."""
    me, parent, session = os.getpid(), os.getppid(), os.getsid(0)
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 0)):
        members = []
        for p in psutil.process_iter():
            try:
                if p.pid not in (me, parent) and os.getsid(p.pid) == session:
                    p.send_signal(sig)
                    members.append(p)
            except (psutil.Error, ProcessLookupError, PermissionError):
                pass
        psutil.wait_procs(members, timeout=wait)


try:
    no_token_env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    refused = subprocess.run([*genre_sweep, *sweep], env=no_token_env, capture_output=True, text=True, timeout=120)

    os.environ |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    import ray

    from genre_sweep.cli import main

    samples: list[tuple[int, float]] = []  # (alive worker nodes, GPUs in use)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            if ray.is_initialized():
                try:
                    workers = sum(n["Alive"] for n in ray.nodes()) - 1
                    in_use = ray.cluster_resources().get("GPU", 0) - ray.available_resources().get("GPU", 0)
                    samples.append((workers, in_use))
                except Exception:  # noqa: BLE001 - a sample lost while the cluster changes is skipped
                    pass
            time.sleep(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    began = time.monotonic()
    code = main(sweep)
    sweep_s = time.monotonic() - began
    done.set()
    sampler.join()
    ray.shutdown()  # the sweep's driver is done, as when `genre-sweep sweep` exits: it holds nothing on the workers
    ray.init(address=address, log_to_driver=False)

    ended, workers_after = time.monotonic(), None
    while time.monotonic() - ended < 150:
        workers_after = sum(n["Alive"] for n in ray.nodes()) - 1
        if workers_after == 0:
            break
        time.sleep(1)
    scaled_down_s = time.monotonic() - ended

    import optuna

    study = optuna.load_study(study_name="as", storage=f"sqlite:///{work / 'sweeps' / 'as' / 'optuna.db'}")
    print(
        "OUTCOME",
        json.dumps(
            {
                "refused_code": refused.returncode,
                "refused_errors": [line for line in refused.stderr.splitlines() if line.startswith("error:")],
                "refused_traceback": "Traceback" in refused.stderr,
                "code": code,
                "sweep_s": round(sweep_s, 1),
                "max_workers": max((w for w, _ in samples), default=0),
                "worker_counts": sorted({w for w, _ in samples}),
                "max_gpus_in_use": max((g for _, g in samples), default=0),
                "states": sorted(t.state.name for t in study.trials),
                "epochs": sorted(len(t.intermediate_values) for t in study.trials),
                "workers_after": workers_after,
                "scaled_down_s": round(scaled_down_s, 1),
            }
        ),
        flush=True,
    )
    ray.shutdown()
finally:
    stop_cluster()
