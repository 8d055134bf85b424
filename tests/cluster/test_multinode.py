"""Multi-node Ray clusters on this machine: node stores, GPU placement, a lost worker, autoscaling, a launched job."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # each test starts a multi-node Ray cluster of its own
ROOT = Path(__file__).resolve().parents[2]


def run_script(name: str, *args: str, timeout: float = 480) -> dict:
    """Runs ``tests/cluster/<name>`` in its own process group and returns the JSON of its OUTCOME line.

    Ray's processes may write to the same stdout, even after that line, so the line is found by its marker.

    On a timeout the whole group is killed, Ray's raylets and GCS included, so that a stuck cluster
    can't hold ports or CPUs for the tests after it.
    """
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name(name)), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"{name} ran past {timeout:g} s; its stderr ends:\n{err[-3000:]}") from None
    assert proc.returncode == 0, err[-3000:]
    lines = [line for line in out.splitlines() if line.startswith("OUTCOME ")]
    assert lines, f"{name} printed no OUTCOME line; its stderr ends:\n{err[-3000:]}"
    return json.loads(lines[-1].removeprefix("OUTCOME "))


def test_each_node_builds_its_store_and_cache_once_a_cache_over_the_budget_is_off_and_gpu_trials_land_on_the_gpu(
    sweep_shards, quick_space, tmp_path
):
    outcome = run_script("node_stores.py", str(sweep_shards), str(tmp_path), str(quick_space))
    assert outcome["errors"] == 0
    roomy = outcome["roomy"]
    assert len(roomy) == 4 and all(t["cached"] for t in roomy)
    per_node = {node: sum(t["node"] == node for t in roomy) for node in outcome["builds"]}
    assert sorted(per_node.values()) == [2, 2], per_node  # two trials on each node, started together
    for node, built in outcome["builds"].items():  # each node built its dataset, then each split's states, once
        assert len(built) == 3 and built[0].startswith("dataset-"), (node, built)
        assert sorted(b.rsplit("/", 1)[1] for b in built[1:]) == ["train", "val"], (node, built)
    # over --node-disk-gb: the sweep runs without the cache, and one line says why and what it costs
    assert outcome["tight_cached"] == [False, False]
    (line,) = [w for w in outcome["tight_warnings"] if "prefix cache off" in w]
    assert "over --node-disk-gb 0.001" in line and "frozen layers" in line
    # trials asking for a GPU land only on the node that advertises one (one cluster serves both checks)
    assert outcome["gpu_trials"] == 3 and outcome["gpu_trial_nodes"] == [outcome["gpu_node"]]


def test_launch_submits_prepare_sweep_retrain_as_one_ray_job(tmp_path, quick_space):
    from tests.conftest import make_corpus

    corpus = make_corpus(tmp_path / "corpus", per_genre=4, seconds=6.0, genres=("blues", "metal"))
    space = tmp_path / "space.yaml"
    space.write_text(quick_space.read_text())
    (tmp_path / "bucket").mkdir()
    outcome = run_script(
        "launch_job.py", str(ROOT / "cluster.yaml"), str(corpus), str(tmp_path / "bucket"), str(space), str(ROOT)
    )
    assert outcome["status"] == "SUCCEEDED", outcome["log_tail"]
    assert "sweeps/job/report/summary.md" in outcome["report"]


LONG_SPACE = """
space:
  learning_rate: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}
  batch_size: null
  num_train_epochs: null
fixed:
  num_train_epochs: 40
  batch_size: 8
  gradient_accumulation_steps: 1
"""


def test_prepare_spreads_over_workers_and_a_sweep_survives_losing_one(tmp_path):
    """Head without CPUs + two workers: prepare runs on both; a worker killed mid-sweep costs no trial."""
    from tests.conftest import make_corpus

    corpus = make_corpus(tmp_path / "corpus", per_genre=4, seconds=6.0, genres=("blues", "metal"))
    space = tmp_path / "space.yaml"
    space.write_text(LONG_SPACE)
    outcome = run_script("lost_worker.py", str(corpus), str(tmp_path), str(space))
    assert outcome["prepare_nodes"] == 2, outcome
    assert outcome["rows"]["train"] > 0 and outcome["rows"]["val"] > 0
    assert outcome["removed"] and outcome["alive_nodes"] == 2  # head + the surviving worker
    trials = outcome["trials"]
    assert len(trials) == 4 and not any(t["error"] for t in trials)
    assert all(t["epochs"][-1] == 40 for t in trials)  # every trial ran to the end
    moved = [t for t in trials if outcome["doomed"] in t["nodes"]]
    assert moved, "no trial ran on the removed worker"
    for t in moved:  # retried on the surviving worker, resuming from its checkpoint, not from epoch 1
        assert t["nodes"][-1] != outcome["doomed"]
        assert t["epochs"].count(1) == 1
    assert outcome["study_states"] == ["COMPLETE"] * 4


def test_a_sweep_on_an_autoscaling_cluster_scales_its_gpu_workers_up_together_and_back_down(sweep_shards, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(
        "space:\n  learning_rate: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}\n"
        "  batch_size: {type: categorical, choices: [8, 16]}\n  num_train_epochs: null\n"
        "fixed:\n  gradient_accumulation_steps: 1\n  num_train_epochs: 2\n"
    )
    outcome = run_script("autoscaling_sweep.py", str(sweep_shards), str(space), str(tmp_path / "work"))
    # a `ray start` cluster wants its token: without it, one line saying what to set
    assert outcome["refused_code"] == 2 and not outcome["refused_traceback"]
    ((line,),) = [outcome["refused_errors"]]
    assert "refused this client's token" in line and "RAY_AUTH_MODE=token" in line
    # with it: planned from the cluster config, both GPU workers started, 4 trials of 0.5 GPU at once
    assert outcome["code"] == 0
    # (Ray's autoscaler may launch a third worker while the first two register, and remove it at once as
    # over max_workers_per_type: seen in its monitor.log; so the count of alive workers can touch 3.)
    assert outcome["max_workers"] >= 2 and outcome["max_gpus_in_use"] == 2.0, outcome
    assert outcome["states"] == ["COMPLETE"] * 4 and outcome["epochs"] == [2] * 4
    # and once the sweep is done, the idle workers go (idle_timeout_minutes 0.1)
    assert outcome["workers_after"] == 0, outcome


def test_a_spot_notice_drains_the_node_and_its_trials_move_mid_epoch_without_a_failure_ending_as_undisturbed(
    sweep_shards, tmp_path
):
    """A spot worker's interruption notice: the watcher drains it, its trials checkpoint the step they are at and
    resume on another worker from there (not counted against --max-failures 0), ending as if never stopped."""
    space = tmp_path / "space.yaml"
    space.write_text(
        "space:\n  learning_rate: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}\n"
        "  batch_size: null\n  num_train_epochs: null\n"
        "fixed:\n  batch_size: 2\n  gradient_accumulation_steps: 1\n  num_train_epochs: 8\n"
    )
    outcome = run_script("spot_preemption.py", str(sweep_shards), str(tmp_path / "work"), str(space))
    assert outcome["announced_at"] and outcome["killed_at"], outcome
    trials = outcome["trials"]
    assert len(trials) == 4 and not any(t["error"] for t in trials)  # with --max-failures 0: nothing counted
    assert outcome["study_states"] == ["COMPLETE"] * 4  # one study trial each: no FAIL, no RUNNING left
    moved = [t for t in trials if outcome["spot"] in t["nodes"]]
    assert len(moved) == 2, trials  # both trials on the spot worker moved
    for t in moved:
        assert t["nodes"][0] == outcome["spot"] and outcome["spot"] not in t["nodes"][1:]  # moved off it, once
        assert t["epochs"] == list(range(1, 9)), t  # no epoch run twice: the interrupted one went on from its step
        ((where,),) = [t["moved"]]  # one move, said once
        assert where["preempted_node"] == outcome["spot"]
        # checkpointed on the notice, well before the node went: only the steps since the notice were at stake
        assert outcome["announced_at"] < where["preempted_at"] < outcome["killed_at"], (where, outcome)
        print(  # the figure docs/cluster.md gives (pytest -s)
            f"trial {t['id']}: epoch {where['preempted_epoch']:.0f} step {where['preempted_step']:.0f}, checkpointed "
            f"{where['preempted_at'] - outcome['announced_at']:.1f} s after the notice (the trial saw the drain "
            f"{where['notice_to_checkpoint_s']:.1f} s before its checkpoint was in the storage)"
        )
        assert t["final"] == t["undisturbed"], t  # exactly the metrics of a run that never stopped
        assert t["left_in_preempted"] == []  # its mid-epoch checkpoint is gone once it reported an epoch
    assert outcome["watch_codes"][1] == 0, outcome["watch_out"]  # the spot worker's watcher drained it and ended
    assert outcome["watch_codes"][0] is None or outcome["watch_codes"][0] != 0  # the other one was still polling
