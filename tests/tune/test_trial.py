"""A trial's resume point when the checkpoint Tune names is gone (real folders, Tune's own Checkpoint)."""

import logging

import pyarrow.fs as pafs
from ray import tune

from genre_sweep.model.checkpoint import OPTIMIZER, STATE, TRAINABLE
from genre_sweep.tune.trial import resumable


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
