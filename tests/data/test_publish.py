"""prepare's publish: the old dataset survives a typo, a store outage and a killed run; litter is cleaned up."""

import fcntl
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from genre_sweep.config import resolve
from genre_sweep.data.configs import PrepareConfig
from genre_sweep.data.pipeline import run_prepare
from genre_sweep.data.prepare import main as prepare_main
from genre_sweep.data.publish import open_destination
from genre_sweep.data.shards import open_dataset
from genre_sweep.store import StoreError, StoreOptions, filesystem, list_files, read_bytes, write_to
from tests.conftest import make_corpus

GENRES = ("blues", "jazz")


def _config(source, out, **kw) -> PrepareConfig:
    return resolve(
        PrepareConfig,
        {"source": str(source), "out": str(out), "genres": ",".join(GENRES), "effects": "none", **kw},
    )


def _files(folder) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("publish"), per_genre=3, genres=GENRES)


@pytest.fixture
def dataset(ray_local, corpus, tmp_path):
    out = tmp_path / "ds"
    run_prepare(_config(corpus, out))
    return out


def test_a_typo_in_the_source_with_overwrite_leaves_the_dataset_untouched(dataset, tmp_path, capsys):
    before = {f: (dataset / f).read_bytes() for f in _files(dataset)}
    code = prepare_main(["--source", str(tmp_path / "corpsu"), "--out", str(dataset), "--genres", "blues,jazz"])
    code_overwrite = prepare_main(
        ["--source", str(tmp_path / "corpsu"), "--out", str(dataset), "--genres", "blues,jazz", "--overwrite"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == code_overwrite == 2
    assert "already holds a dataset; pass --overwrite" in err[0]
    assert err[1].startswith("error: ") and "corpsu" in err[1] and len(err) == 2
    assert {f: (dataset / f).read_bytes() for f in _files(dataset)} == before  # not a byte lost, nothing added


def test_a_bucket_root_or_a_folder_of_other_files_is_refused_before_any_work(corpus, tmp_path, s3_endpoint):
    with pytest.raises(StoreError, match="bucket root; give a prefix of its own"):
        run_prepare(_config(corpus, "s3://somebucket", s3_endpoint=s3_endpoint, overwrite=True))
    other = tmp_path / "home"
    (other / "notes").mkdir(parents=True)
    (other / "notes" / "todo.txt").write_text("mine")
    (other / "manifest.json").write_text("{}")
    with pytest.raises(StoreError, match=r"holds files that are not a genre-sweep dataset \(1, e.g. notes/todo.txt\)"):
        run_prepare(_config(corpus, other, overwrite=True))
    assert _files(other) == ["manifest.json", "notes/todo.txt"]


def test_a_killed_prepare_leaves_the_old_dataset_and_the_next_run_leaves_no_stray_file(dataset, corpus, tmp_path):
    old = open_dataset(str(dataset)).manifest
    command = [
        sys.executable,
        "-m",
        "genre_sweep.data.prepare",
        "--source",
        str(corpus),
        "--out",
        str(dataset),
        "--genres",
        "blues,jazz",
        "--effects",
        "echo,highpass,lowpass,bundle",  # slow enough to be killed half-way
        "--tracks-per-task",
        "1",
        "--overwrite",
    ]
    log = (tmp_path / "prepare.log").open("w")
    driver = subprocess.Popen(command, start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
    new_shards = []
    deadline = time.monotonic() + 180
    while not new_shards and time.monotonic() < deadline and driver.poll() is None:
        time.sleep(0.2)
        new_shards = [p for p in dataset.glob("v-*/*/*.parquet") if p.parts[-3] != old["version_dir"]]
    assert driver.poll() is None and new_shards, (tmp_path / "prepare.log").read_text()[-3000:]
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and the Ray it started, half-way through the shards
    driver.wait()

    assert open_dataset(str(dataset)).manifest == old  # the previous dataset still opens, unchanged
    assert open_dataset(str(dataset)).read_split("train").num_rows == old["summary"]["rows_out"]["train"]
    assert len(list(dataset.glob("v-*"))) == 2  # and the partial version is there, unreferenced

    new = run_prepare(_config(corpus, dataset, overwrite=True))
    assert _files(dataset) == sorted(["manifest.json", *(f"{new['version_dir']}/{s['path']}" for s in new["shards"])])


def test_an_s3_outage_mid_prepare_is_one_line_and_the_same_command_completes_once_it_is_back(
    ray_local, corpus, restartable_s3, capsys, caplog
):
    endpoint, s3 = restartable_s3.endpoint, restartable_s3.client()
    s3.create_bucket(Bucket="outage")
    out = "s3://outage/ds"
    command = ["--source", str(corpus), "--out", out, "--genres", "blues,jazz", "--s3-endpoint", endpoint]
    assert prepare_main([*command, "--effects", "none"]) == 0
    old = json.loads(s3.get_object(Bucket="outage", Key="ds/manifest.json")["Body"].read())
    slow = [*command, "--effects", "echo,highpass,lowpass,bundle", "--tracks-per-task", "1", "--overwrite"]

    def stop_once_a_block_is_done() -> None:  # once a task has written its shards and its block's record
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            keys = [o["Key"] for o in s3.list_objects_v2(Bucket="outage", Prefix="ds/").get("Contents", [])]
            if any("/done/" in k for k in keys):
                restartable_s3.stop()
                return
            time.sleep(0.05)

    stopper = threading.Thread(target=stop_once_a_block_is_done)
    stopper.start()
    capsys.readouterr()
    try:
        code = prepare_main(slow)
        stopper.join()
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2, err
        assert err[-1].startswith("error: cannot write") and out in err[-1], err
        assert not any("Traceback" in line for line in err), err  # the one line, without Ray Data's in front
    finally:
        restartable_s3.start()  # the store comes back as it was
    manifest = json.loads(s3.get_object(Bucket="outage", Key="ds/manifest.json")["Body"].read())
    assert manifest == old  # no new manifest; the previous dataset still opens
    assert open_dataset(out, StoreOptions(endpoint)).read_split("train").num_rows > 0

    left = {o["Key"] for o in s3.list_objects_v2(Bucket="outage", Prefix="ds/").get("Contents", [])}
    kept = {k for k in left if k.endswith(".parquet") and old["version_dir"] not in k}  # the cut-off run's shards
    assert kept and any("/done/" in k for k in left)  # kept for the same command to take up

    def retries() -> int:  # the tasks' warnings, in the worker logs of Ray's session, and the driver's
        logs = Path(ray_local._private.worker._global_node.get_session_dir_path()) / "logs"
        tasks = sum(f.read_text(errors="replace").count("could not write shard") for f in logs.glob("worker-*.err"))
        return tasks + caplog.text.count("could not publish")

    before, met = retries(), threading.Event()

    def blip_once_new_shards_appear() -> None:
        """Once this run's first shard is written, the store goes away until a write has met the outage and is being
        retried (a task's shard, or the driver's manifest when the tasks were done), 8 s at most."""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            keys = [o["Key"] for o in s3.list_objects_v2(Bucket="outage", Prefix="ds/").get("Contents", [])]
            if any(k.endswith(".parquet") and k not in left for k in keys):  # this run's, not the failed run's
                restartable_s3.stop()
                until = time.monotonic() + 8
                while time.monotonic() < until and not met.is_set():
                    if retries() > before:
                        met.set()
                    time.sleep(0.1)
                restartable_s3.start()
                return
            time.sleep(0.05)

    blip = threading.Thread(target=blip_once_new_shards_appear)
    blip.start()
    with caplog.at_level(logging.INFO, logger="genre_sweep"):
        code = prepare_main(slow)
    blip.join()
    assert met.is_set()  # a write met the outage and was retried ...
    assert code == 0, capsys.readouterr().err.strip().splitlines()[-1:]  # ... and the run completed
    assert "prepare: reusing the shards of" in caplog.text  # the cut-off run's completed blocks were taken up
    new = open_dataset(out, StoreOptions(endpoint)).manifest
    assert all(k.startswith(f"ds/{new['version_dir']}/") for k in kept)  # written into the cut-off run's version
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="outage", Prefix="ds/")["Contents"])
    expected = sorted(["ds/manifest.json", *(f"ds/{new['version_dir']}/{s['path']}" for s in new["shards"])])
    assert [k for k in keys if not k.endswith("/")] == expected  # directory markers aside: no stray object


@pytest.mark.parametrize("where", ["local", "s3"])
def test_of_two_prepares_into_one_out_the_later_publish_fails_in_one_line_and_removes_its_shards(
    where, tmp_path, request
):
    if where == "s3":
        endpoint = request.getfixturevalue("s3_endpoint")
        bucket = request.getfixturevalue("s3_bucket")
        uri, options = f"s3://{bucket}/ds", StoreOptions(endpoint)
    else:
        uri, options = str(tmp_path / "ds"), StoreOptions()
    first, second = open_destination(uri, options, False), open_destination(uri, options, False)  # both see none
    write_to(f"{first.version_uri}/train/part-00000.parquet", b"first's shard", options)
    published = b'{"version_dir": "first"}'
    first.publish(published)
    write_to(f"{second.version_uri}/train/part-00000.parquet", b"second's shard", options)  # still running
    with pytest.raises(StoreError) as e:
        second.publish(b'{"version_dir": "second"}')
    assert str(e.value) == (
        f"{uri}/manifest.json changed while this prepare ran (sha256 none when it started, "
        f"{hashlib.sha256(published).hexdigest()[:12]} now): another prepare published there; nothing was published"
    )
    second.discard()
    fs, root = filesystem(uri, options)
    assert [f.path[len(root) + 1 :] for f in list_files(fs, root)] == [
        "manifest.json",
        f"{first.version}/train/part-00000.parquet",
    ]
    assert read_bytes(f"{uri}/manifest.json", options) == published


def test_a_local_publish_checks_and_renames_under_the_destinations_lock(tmp_path):
    out = tmp_path / "ds"
    dest = open_destination(str(out), StoreOptions(), False)
    outcome = []
    fd = os.open(out, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another prepare in the middle of its own publish
    publisher = threading.Thread(target=lambda: outcome.append(_outcome(dest.publish, b"mine")))
    publisher.start()
    publisher.join(0.5)
    assert publisher.is_alive() and not (out / "manifest.json").exists()  # it waits for the lock...
    (out / "manifest.json").write_bytes(b"theirs")  # ...while the holder publishes
    os.close(fd)
    publisher.join(10)
    assert outcome == ["StoreError"] and (out / "manifest.json").read_bytes() == b"theirs"


def _outcome(action, *args) -> str:
    try:
        action(*args)
    except StoreError:
        return "StoreError"
    return "ok"


def test_a_prepare_whose_out_changes_while_it_runs_fails_in_one_line_and_leaves_none_of_its_shards(
    ray_local, corpus, tmp_path
):
    out = tmp_path / "ds"
    theirs = b'{"written": "by another prepare"}'

    def publish_theirs_once_this_run_has_begun() -> None:
        deadline = time.monotonic() + 120
        while not list(out.glob("v-*")) and time.monotonic() < deadline:
            time.sleep(0.01)
        write_to(str(out / "manifest.json"), theirs)

    other = threading.Thread(target=publish_theirs_once_this_run_has_begun)
    other.start()
    try:
        with pytest.raises(StoreError, match=r"manifest.json changed while this prepare ran .*nothing was published$"):
            run_prepare(_config(corpus, out, tracks_per_task=1))  # six tasks: long enough for the other to publish
    finally:
        other.join()
    assert _files(out) == ["manifest.json"] and (out / "manifest.json").read_bytes() == theirs


def test_only_a_run_of_the_same_inputs_and_settings_takes_up_an_unpublished_version(tmp_path):
    uri, options = str(tmp_path / "ds"), StoreOptions()
    first = open_destination(uri, options, False)
    assert first.resume_or_start("same") == []  # nothing to take up: its own version, marked
    record = {"covers": ["blues/a"], "shards": [], "rejected": [], "tracks": [], "nodes": []}
    write_to(f"{first.version_uri}/done/0123.json", json.dumps(record).encode())
    running = open_destination(uri, options, False)  # its run (this process) still going: not taken up
    assert running.resume_or_start("same") == [] and running.version != first.version
    run = json.loads(read_bytes(f"{first.version_uri}/run.json"))
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    write_to(f"{first.version_uri}/run.json", json.dumps({**run, "pid": int(ended.stdout)}).encode())  # run over
    other = open_destination(uri, options, False)
    assert other.resume_or_start("other settings") == [] and other.version != first.version
    same = open_destination(uri, options, False)
    assert same.resume_or_start("same") == [record] and same.version == first.version


def test_a_prepare_that_fills_its_disk_is_one_line_leaves_no_version_and_completes_once_there_is_room(
    ray_local, corpus, small_disk, capsys
):
    disk = small_disk("256k")
    out = disk.path / "ds"
    command = ["--source", str(corpus), "--out", str(out), "--genres", ",".join(GENRES), "--effects", "echo"]
    capsys.readouterr()
    assert prepare_main(command) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: cannot write") and "No space left on device" in err[-1], err
    assert [p.name for p in out.iterdir()] == []  # its version folder removed: the space is free again
    disk.grow("64m")  # room
    assert prepare_main(command) == 0
    assert open_dataset(str(out)).read_split("train").num_rows > 0
