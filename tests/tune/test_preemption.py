"""A preempted trial's pieces: Tune retries ``TrialPreempted`` without counting a failure; the mid-epoch checkpoint
travels through the trial's folder of the sweep's storage (local and S3) and only a current one is picked up.

The whole path (a spot notice, the drain, trials moving between nodes) is tests/cluster's spot test."""

import json
import os
import shutil
from pathlib import Path

import pytest
from pyarrow import fs as pafs

from genre_sweep.model.checkpoint import OPTIMIZER, POSITION, STATE, TRAINABLE
from genre_sweep.tune import internals, preemption


def test_tune_restarts_a_trial_that_ends_preempted_without_counting_a_failure(ray_local, tmp_path):
    """Tune's rule for actors lost to a preempted node, which ``TrialPreempted`` relies on: with --max-failures 0
    a counted failure would end the trial as ERROR."""
    from ray import tune

    flag = tmp_path / "preempted-once"

    def trainable(config):
        start = 0
        if (checkpoint := tune.get_checkpoint()) is not None:
            with checkpoint.as_directory() as d:
                start = json.loads(Path(d, "at.json").read_text())["epoch"]
        for epoch in range(start + 1, 4):
            folder = tmp_path / f"ckpt-{os.getpid()}-{epoch}"
            folder.mkdir()
            (folder / "at.json").write_text(json.dumps({"epoch": epoch}))
            tune.report({"epoch": epoch, "score": float(epoch)}, checkpoint=tune.Checkpoint.from_directory(folder))
            if epoch == 1 and not flag.exists():
                flag.write_text("")
                raise preemption.TrialPreempted("trial preempted on node abc at epoch 2 step 3")

    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(num_samples=1, max_concurrent_trials=1, metric="score", mode="max"),
        run_config=tune.RunConfig(
            storage_path=str(tmp_path / "store"), name="p", failure_config=tune.FailureConfig(max_failures=0)
        ),
    )
    (result,) = tuner.fit()
    assert flag.exists() and result.error is None
    assert list(result.metrics_dataframe["epoch"]) == [1, 2, 3]  # resumed from epoch 1's checkpoint, not restarted


def test_the_error_crosses_processes_as_preempted():
    import pickle

    error = pickle.loads(pickle.dumps(preemption.TrialPreempted("trial x preempted")))
    assert error.preempted and str(error) == "trial x preempted"


def stopped_checkpoint(root: Path, epoch: int, step: int):
    """A stand-in of ``train``'s mid-epoch checkpoint folder (the files ``pick_up`` requires) and its ``Stopped``."""
    from genre_sweep.model.train import Stopped

    path = root / f"stopped-{epoch}-{step}"
    path.mkdir(parents=True)
    for name in (STATE, TRAINABLE, OPTIMIZER, POSITION):
        (path / name).write_text(f"{name} of epoch {epoch} step {step}")
    return Stopped(path, epoch, step, 32)


class Seen:  # what ``keep`` reads of a DrainWatch
    seen_at, deadline_ms = 1000.0, 1_000_120_000


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_mid_epoch_checkpoint_goes_to_the_trials_folder_and_only_a_current_one_is_picked_up(where, tmp_path, request):
    if where == "s3":
        from genre_sweep.store import StoreOptions, filesystem

        bucket, endpoint = request.getfixturevalue("s3_bucket"), request.getfixturevalue("s3_endpoint")
        filesystem_, root = filesystem(f"s3://{bucket}/sweep/trial_1", StoreOptions(endpoint))
    else:
        filesystem_, root = pafs.LocalFileSystem(), str(tmp_path / "store" / "trial_1")
    storage = (filesystem_, root)
    assert preemption.pick_up(storage, 0, tmp_path / "none") is None  # nothing there yet

    info = preemption.keep(stopped_checkpoint(tmp_path, 3, 12), "node-a", Seen(), storage)
    assert (info["node"], info["epoch"], info["step"], info["deadline_ms"]) == ("node-a", 3, 12, 1_000_120_000)
    got = preemption.pick_up(storage, 2, tmp_path / "into")  # Tune's checkpoint is epoch 2's: this one is newer
    assert got == info
    assert (tmp_path / "into" / POSITION).read_text() == f"{POSITION} of epoch 3 step 12"
    assert preemption.pick_up(storage, 3, tmp_path / "stale") is None  # Tune's epoch 3 came after it: stale

    preemption.keep(stopped_checkpoint(tmp_path, 5, 4), "node-b", Seen(), storage)  # moved, preempted again
    assert preemption.pick_up(storage, 4, tmp_path / "again")["node"] == "node-b"
    preemption.forget(storage)
    assert preemption.pick_up(storage, 0, tmp_path / "gone") is None


def test_a_checkpoint_cut_off_before_its_info_file_is_not_picked_up(tmp_path):
    storage = (pafs.LocalFileSystem(), str(tmp_path / "trial"))
    preemption.keep(stopped_checkpoint(tmp_path, 2, 5), "node-a", Seen(), storage)
    (folder,) = (tmp_path / "trial" / preemption.FOLDER).iterdir()
    (folder / preemption.INFO).unlink()  # the upload stopped before its last file
    assert preemption.pick_up(storage, 1, tmp_path / "into") is None
    shutil.rmtree(folder)


def test_the_moved_trials_line_names_both_nodes_the_epoch_and_the_step():
    info = {"node": "a" * 56, "epoch": 3, "step": 12, "drain_seen_at": 10.0, "checkpointed_at": 11.5}
    result = {**preemption.moved_report(info), "node_id": "b" * 56}
    assert set(preemption.REPORTED) == set(preemption.moved_report(info))
    line = preemption.moved_line("7e1d", result)
    assert line.startswith(f"trial 7e1d preempted on node {'a' * 8} at epoch 3 step 12, resumed on node {'b' * 8}")
    assert "1.5 s after the drain was seen" in line


def test_draining_nodes_reads_rays_gcs(ray_local):
    assert internals.draining_nodes() == {}  # none drained in the test session's Ray


def test_tunes_failed_trial_error_is_dropped_for_a_preempted_trial_only():
    import logging
    import sys

    preemption.quiet_tune_on_preemption()
    preemption.quiet_tune_on_preemption()  # once per process, however often the sweep starts
    controller = logging.getLogger("ray.tune.execution.tune_controller")
    assert sum(isinstance(f, preemption._QuietPreempted) for f in controller.filters) == 1

    def record(error: Exception) -> logging.LogRecord:
        try:
            raise error
        except Exception:
            return controller.makeRecord(
                controller.name, logging.ERROR, __file__, 1, "Trial task failed", (), sys.exc_info()
            )

    assert not controller.filter(record(preemption.TrialPreempted("trial x preempted")))
    assert controller.filter(record(RuntimeError("a real failure")))
