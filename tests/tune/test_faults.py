"""Sweeps under real faults: an S3 outage, a lost head's study, a damaged ASHA state, a killed trial process,
a foreign folder to resume, and bad inputs that must cost seconds (issue 12's fault-injection suite)."""

import logging
import sqlite3
import threading
import time
from collections.abc import Callable

import optuna
import psutil
import pytest

from genre_sweep.tune.sweep import main as sweep_main
from genre_sweep.tune.trial import TRIAL_ACTOR
from tests.tune.test_search import SetOn
from tests.tune.test_sweep import sweep_args

FINISHED = ("COMPLETE", "PRUNED")


def _states(name: str, url: str) -> list[str]:
    return [t.state.name for t in optuna.load_study(study_name=name, storage=url).trials]


def _finished(db) -> int:
    """Finished trials of a SQLite study, read without Optuna (its set-up would write to the file)."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            return con.execute("SELECT count(*) FROM trials WHERE state IN ('COMPLETE', 'PRUNED')").fetchone()[0]
    except sqlite3.Error:  # not created yet
        return 0


def _keys(s3, bucket: str, prefix: str) -> list[str]:
    return [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]


def _sweep_with_fault(args: list[str], when: Callable[[], bool], fault: Callable[[], None]) -> int:
    """Run the sweep command in this process; a thread injects ``fault`` once ``when`` holds. Its exit code."""
    over = threading.Event()

    def watch() -> None:
        while not over.is_set():
            if when():
                fault()
                return
            time.sleep(0.2)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        return sweep_main(args)
    finally:
        over.set()
        watcher.join()


@pytest.mark.slow
def test_a_sweep_rides_out_an_s3_outage_then_resumes_on_a_new_head_from_the_buckets_study(
    sweep_shards, quick_space, restartable_s3, tmp_path, caplog, capsys
):
    s3 = restartable_s3.client()
    s3.create_bucket(Bucket="faults")
    head = tmp_path / "head"  # the driver's disk: lost with the head node
    url = f"sqlite:///{head / 'study.db'}"
    args = sweep_args(
        sweep_shards,
        "s3://faults/sweeps",
        "outage",
        quick_space,
        4,
        "--max-concurrent-trials",
        "2",
        "--no-retrain",
        "--s3-endpoint",
        restartable_s3.endpoint,
        "--study-storage",
        url,
    )

    finished_at_outage = []

    def outage() -> None:  # unreachable for 10 s, in the middle of the trials
        finished_at_outage.append(_finished(head / "study.db"))
        restartable_s3.outage(10.0)

    code = _sweep_with_fault(
        args, lambda: any("/checkpoint_" in k for k in _keys(s3, "faults", "sweeps/outage/")), outage
    )
    assert code == 0
    assert finished_at_outage and finished_at_outage[0] < 4  # the store went away mid-sweep
    assert sorted(_states("outage", url)) == sorted(s for s in _states("outage", url) if s in FINISHED)
    assert len(_states("outage", url)) == 4  # every trial finished: none lost to the outage

    # The study's copy in the bucket holds every trial; the head (and its study) is lost; the ASHA state
    # is damaged; --resume on a new head restores the study from the bucket and finishes.
    copy = tmp_path / "copy.db"
    copy.write_bytes(s3.get_object(Bucket="faults", Key="sweeps/outage-optuna.db")["Body"].read())
    assert _finished(copy) == 4
    (head / "study.db").unlink()
    s3.put_object(Bucket="faults", Key="sweeps/outage-asha-state.json", Body=b'{"rungs": [[[1.0, {"')
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="genre_sweep"):
        assert sweep_main([*args, "--resume"]) == 0
    assert "study restored from s3://faults/sweeps/outage-optuna.db" in caplog.text
    assert "ASHA state s3://faults/sweeps/outage-asha-state.json is unreadable" in caplog.text
    assert len([s for s in _states("outage", url) if s in FINISHED]) == 4

    # A folder our sweep did not write is not unpickled: without the record, --resume refuses it.
    s3.delete_object(Bucket="faults", Key="sweeps/outage/genre-sweep.json")
    capsys.readouterr()
    assert sweep_main([*args, "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "was not written by `genre-sweep sweep`" in err[0]


def _trial_processes() -> list[psutil.Process]:
    """Ray worker processes running a Tune trial (their title names the trial's actor class, ray::GenreSweepTrial)."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(p.info["cmdline"] or [])
        if TRIAL_ACTOR in cmdline:
            found.append(p)
    return found


@pytest.mark.slow
def test_a_killed_trial_process_is_retried_from_its_checkpoint_and_told_to_the_study_once(
    sweep_shards, quick_space, tmp_path, caplog
):
    storage, name = tmp_path / "sweeps", "killed"
    args = sweep_args(sweep_shards, storage, name, quick_space, 2, "--max-concurrent-trials", "1", "--no-retrain")
    killed: list[int] = []

    def kill() -> None:  # SIGKILL: the trial's process dies in its second epoch
        for p in _trial_processes():
            p.kill()
            killed.append(p.pid)

    # once the driver holds epoch 1's checkpoint (its folder appears while it uploads, before the driver has it)
    kept = threading.Event()
    progress = logging.getLogger("genre_sweep.tune.progress")
    seen, level = SetOn("checkpoint of epoch 1 kept", kept), progress.level
    progress.addHandler(seen)
    progress.setLevel(logging.DEBUG)
    try:
        with caplog.at_level(logging.INFO, logger="genre_sweep"):
            code = _sweep_with_fault(args, kept.is_set, kill)
    finally:
        progress.removeHandler(seen)
        progress.setLevel(level)
    assert code == 0 and killed
    assert "failed (failure 1); retrying it from its checkpoint of epoch" in caplog.text
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{storage / name / 'optuna.db'}")
    assert [t.state.name in FINISHED for t in study.trials] == [True, True]  # one entry per trial, finished
    for t in study.trials:  # each epoch once: the retried trial went on from its checkpoint, not from scratch
        assert sorted(t.intermediate_values) == list(range(1, len(t.intermediate_values) + 1))


BAD_INPUTS = [
    ("--shards", "{tmp}/nowhere", "has no manifest.json"),
    ("--pretrained", "{tmp}", "is a local path but has no AST config.json"),
    ("--storage", "s3://no-such-bucket-here/sweeps", "storage s3://no-such-bucket-here/sweeps is not writable"),
    ("--resume", None, "--resume: no sweep named 'bad' in"),
    ("--metric", "eval_accuracy", "argument --metric: invalid choice: 'eval_accuracy' (choose from "),
    ("--space", "{tmp}/zero.yaml", "--space {tmp}/zero.yaml: search space batch_size: low 0: batch_size must be >= 1"),
    (
        "--name",
        "..",
        "name must be a plain folder name (letters, digits, '.', '_', '-'; not starting with '.'), got '..'",
    ),
    ("--grace-period", "7", "--grace-period 7 is above the most epochs a trial runs (6: the space)"),
]


@pytest.mark.parametrize(("flag", "value", "message"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_a_bad_sweep_input_is_one_line_in_seconds_and_writes_nothing(
    sweep_shards, quick_space, s3_endpoint, tmp_path, capsys, flag, value, message
):
    storage = tmp_path / "sweeps"
    (tmp_path / "zero.yaml").write_text(
        "space:\n  batch_size: {type: int, low: 0, high: 8}\n"
    )  # no trial could train 0
    args = sweep_args(sweep_shards, storage, "bad", quick_space, 2, "--s3-endpoint", s3_endpoint)
    if value is None:
        args.append(flag)
    elif flag in args:
        args[args.index(flag) + 1] = value.format(tmp=tmp_path)
    else:
        args += [flag, value.format(tmp=tmp_path)]
    began = time.monotonic()
    capsys.readouterr()
    try:
        code = sweep_main(args)
    except SystemExit as e:  # a flag argparse refuses (a choice): its one line, and exit 2
        code = e.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error: " in err[0] and message.format(tmp=tmp_path) in err[0], err
    assert time.monotonic() - began < 20  # before Ray starts trials or builds a cache
    assert not (storage / "bad").exists()


@pytest.mark.slow
def test_a_sweep_whose_storage_stays_full_stops_in_one_line_and_resumes_once_there_is_room(
    sweep_shards, quick_space, small_disk, capsys
):
    disk = small_disk("400k")
    storage, name = disk.path / "sweeps", "full"
    args = sweep_args(sweep_shards, storage, name, quick_space, 3, "--max-concurrent-trials", "1", "--no-retrain")
    capsys.readouterr()
    assert sweep_main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: a disk the sweep writes to is full"), err
    assert err[0].endswith(f"--name {name} --resume`")
    disk.grow("256m")  # room again
    code = sweep_main([*args, "--resume"])
    assert code == 0, capsys.readouterr().err.strip().splitlines()[-3:]
    states = _states(name, f"sqlite:///{storage / name / 'optuna.db'}")
    assert len(states) >= 3 and "RUNNING" not in states, states
    assert sum(s in FINISHED for s in states) >= 3


def test_a_cut_off_shard_stops_a_sweep_in_one_line_before_any_trial(sweep_shards, quick_space, tmp_path, capsys):
    import shutil

    damaged = tmp_path / "shards"
    shutil.copytree(sweep_shards, damaged)
    shard = sorted(damaged.rglob("val/*.parquet"))[0]
    shard.write_bytes(shard.read_bytes()[:200])  # a copy cut short
    began = time.monotonic()
    capsys.readouterr()
    assert sweep_main(sweep_args(damaged, tmp_path / "sweeps", "cut", quick_space, 2)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"shard val/{shard.name} is not a readable Parquet file" in err[0], err
    assert time.monotonic() - began < 20 and not (tmp_path / "sweeps" / "cut").exists()  # no trial started
