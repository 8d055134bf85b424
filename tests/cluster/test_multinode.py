"""A multi-node Ray cluster on this machine: GPU trials land only on the node that advertises a GPU."""

import json
import subprocess
import sys
from pathlib import Path


def test_trials_land_only_on_nodes_with_the_requested_resources(sweep_shards, quick_space, tmp_path):
    script = Path(__file__).with_name("multinode_sweep.py")
    done = subprocess.run(
        [sys.executable, str(script), str(sweep_shards), str(tmp_path / "sweeps"), str(quick_space)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr[-3000:]
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome["cluster_nodes"] == 3 and outcome["trials"] == 3 and outcome["errors"] == 0
    assert outcome["trial_nodes"] == [outcome["gpu_node"]]
