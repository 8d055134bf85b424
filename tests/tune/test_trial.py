"""A trial's resume point when the checkpoint Tune names is gone (real folders, Tune's own Checkpoint); each trial's
actor named after its trial where Ray shows it (a real local Ray with its dashboard)."""

import json
import logging
import subprocess
import sys
from pathlib import Path

import pyarrow.fs as pafs
from ray import tune

from genre_sweep.model.checkpoint import OPTIMIZER, STATE, TRAINABLE
from genre_sweep.tune.trial import TRIAL_ACTOR, resumable


def _trial_folder(tmp_path, complete: list[int], partial: list[int]):
    for n in complete + partial:
        folder = tmp_path / f"checkpoint_{n:06d}"
        folder.mkdir()
        (folder / STATE).write_text("{}")  # a partial one lacks its weights (Ray uploads in no fixed order)
        if n in complete:
            (folder / TRAINABLE).write_bytes(b"weights")
            (folder / OPTIMIZER).write_bytes(b"moments")
    return lambda n: tune.Checkpoint(str(tmp_path / f"checkpoint_{n:06d}"), filesystem=pafs.LocalFileSystem())


def test_the_named_checkpoint_is_kept_while_it_is_complete(tmp_path):
    named = _trial_folder(tmp_path, complete=[3, 4], partial=[])
    assert resumable(named(3), "t1").path == str(tmp_path / "checkpoint_000003")
    assert resumable(None, "t1") is None  # a trial's first start


def test_a_deleted_checkpoint_gives_way_to_the_next_complete_one_said_in_one_line(tmp_path, caplog):
    named = _trial_folder(tmp_path, complete=[1, 5, 6], partial=[4])  # 2 deleted; 4 cut off mid-upload
    with caplog.at_level(logging.WARNING, logger="genre_sweep"):
        chosen = resumable(named(2), "t1")
    assert chosen.path == str(tmp_path / "checkpoint_000005")  # not 1 (older), not 4 (incomplete)
    assert "trial t1: its checkpoint" in caplog.text and "resuming from" in caplog.text


def test_with_no_complete_checkpoint_after_it_the_trial_starts_over(tmp_path, caplog):
    named = _trial_folder(tmp_path, complete=[1], partial=[3])
    with caplog.at_level(logging.WARNING, logger="genre_sweep"):
        assert resumable(named(2), "t1") is None
    assert "starting over" in caplog.text


def test_each_trial_actor_is_named_after_its_trial_where_ray_shows_it(tmp_path):
    script = Path(__file__).with_name("trial_actors.py")
    done = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=240)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    outcome = json.loads(output.split("OUTCOME ", 1)[1].splitlines()[0])
    (first_id, first), (second_id, second) = outcome["trials"]
    # one actor ran both trials (reuse_actors): the dashboard shows its class, and its repr names its first trial
    trial_actors = [a for a in outcome["actors"] if a["class_name"] == TRIAL_ACTOR]
    assert trial_actors == [{"class_name": TRIAL_ACTOR, "repr_name": f"{TRIAL_ACTOR}({first})"}], outcome["actors"]
    # each forwarded log line is prefixed with the trial its actor runs at the time
    for trial_id, name in ((first_id, first), (second_id, second)):
        (line,) = [line for line in output.splitlines() if line.endswith(f"hello from {trial_id}")]
        assert f"({TRIAL_ACTOR}({name}) pid=" in line, line
    assert "View detailed results here" in output and "To visualize your results with TensorBoard" not in output
